// Public surface of the permission model (docs/requirements/qemu-fleecing.md §1): bits, driver rules, the graph
// oracle (`evaluate`: commands in, accepted edges or a refusal with QEMU's message out) and the
// standard fleecing scenarios.
export * from './perm.ts';
export * from './drivers.ts';
export * from './graph.ts';
export * from './scenarios.ts';
export * from './behaviour.ts';
export * from './storage.ts';
