// The fleecing schemes S1-S4 and their known-bad variants (docs/requirements/qemu-fleecing.md §2.3, §3, §6).
export { fleecingModel, DEFAULT_FLEECING_PARAMS } from './model.ts';
export type { FleecingAction, FleecingBehaviour, FleecingParams } from './model.ts';
export { S1, S2, S3, S4, S4_QEMU_EARLY_RETURN, S4_QEMU_HBITMAP_STATUS, KNOWN_BAD, SCHEMES } from './scheme.ts';
export type { ReaderProtection, Scheme } from './scheme.ts';
export { SNAPSHOT, UNALLOCATED, GARBAGE, DISCARDED, TEMP_DATA, describeValue, isGuestData } from './state.ts';
export type { FleecingState, Reader, Writer, WriterPc, ReaderPc, Discarder } from './state.ts';
export { crossCheckPacked } from './packed.ts';
