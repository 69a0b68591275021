// Permission soundness (docs/design.md "Permission soundness"): bounded graph enumeration, permission verdicts,
// data-plane verdicts for accepted graphs with a snapshot reader.
export * from './graphs.ts';
export * from './dataplane.ts';
export * from './soundness.ts';
export * from './report.ts';
export * from './rules.ts';
