// Public surface of the explorer. Consumers (spec models, soundness, bench, the CLI, and
// conformance interleavings) import from here.

export type { ActionLabel, Behaviour, Invariant, TraceStep } from './behaviour.ts';
export { SpecError } from './errors.ts';
export { explore, neverEnabled } from './explore.ts';
export type { ActionCoverage, ExploreOptions, ExploreResult, StopReason } from './explore.ts';
export { formatCounterexample, rebuildTrace, toTraceFile, viewOf } from './counterexample.ts';
export type { Counterexample, TraceFile } from './counterexample.ts';
export { formatLabel, sameLabel } from './label.ts';
export { parseTraceFile, replay } from './replay.ts';
export type { ReplayOutcome } from './replay.ts';
export { allExecutions, terminalStates } from './executions.ts';
export type { Execution, ExecutionOptions, TerminalState } from './executions.ts';
export { toDot } from './dot.ts';
export { formatCoverage, formatReport, formatSummary, toJson } from './report.ts';
export type { ExploreJson } from './report.ts';
export { ProgressMeter, formatProgress } from './progress.ts';
export type { ProgressOptions, ProgressSample } from './progress.ts';
