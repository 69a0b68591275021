// Permission bits of the QEMU block layer as of 7.2: four bits, GRAPH_MOD (0x10) gone since 6.2.
// docs/requirements/qemu-fleecing.md §1.1 (include/block/block-common.h, enum BLK_PERM_*).

/** A permission set: a bit mask over the four BLK_PERM_* bits. */
export type PermSet = number;

export const CONSISTENT_READ: PermSet = 0x01;
export const WRITE: PermSet = 0x02;
export const WRITE_UNCHANGED: PermSet = 0x04;
export const RESIZE: PermSet = 0x08;
/** BLK_PERM_ALL is 0x0f on 7.2: GRAPH_MOD was dropped in 6.2 (docs/requirements/qemu-fleecing.md §1.1). */
export const ALL: PermSet = 0x0f;
export const NONE: PermSet = 0;

/** DEFAULT_PERM_PASSTHROUGH: what a filter forwards. */
export const PASSTHROUGH: PermSet = CONSISTENT_READ | WRITE | WRITE_UNCHANGED | RESIZE;
/** DEFAULT_PERM_UNCHANGED = ALL & ~PASSTHROUGH: 0 since GRAPH_MOD is gone. */
export const UNCHANGED: PermSet = ALL & ~PASSTHROUGH;

/** The names `x-debug-query-block-graph` prints (QAPI BlockPermission), in bit order. */
export type PermName = 'consistent-read' | 'write' | 'write-unchanged' | 'resize';

const BITS: ReadonlyArray<readonly [PermSet, PermName, string]> = [
  // [bit, QAPI name, bdrv_perm_names text used in error messages]
  [CONSISTENT_READ, 'consistent-read', 'consistent read'],
  [WRITE, 'write', 'write'],
  [WRITE_UNCHANGED, 'write-unchanged', 'write unchanged'],
  [RESIZE, 'resize', 'resize'],
];

/** QAPI names of the bits in `p`, in bit order. */
export function permNames(p: PermSet): PermName[] {
  return BITS.filter(([bit]) => (p & bit) !== 0).map(([, name]) => name);
}

/** The text `bdrv_perm_names` builds for error messages (block.c): "consistent read, write". */
export function permText(p: PermSet): string {
  return BITS.filter(([bit]) => (p & bit) !== 0)
    .map(([, , text]) => text)
    .join(', ');
}

/** Parse QAPI names back into a mask (for tables written by hand). */
export function permsFrom(names: readonly PermName[]): PermSet {
  let p = NONE;
  for (const n of names) {
    const bit = BITS.find(([, name]) => name === n);
    if (bit === undefined) throw new RangeError(`unknown permission name '${String(n)}'`);
    p |= bit[0];
  }
  return p;
}

/** bdrv_a_allow_b (block.c): parent a allows parent b iff everything b uses is shared by a. */
export function allows(aShared: PermSet, bPerm: PermSet): boolean {
  return (bPerm & aShared) === bPerm;
}

/** Cumulative permission of a node over the edges into it (bdrv_get_cumulative_perm): the union
 * of what its parents take, the intersection of what they share. Here, not in graph.ts, so that
 * graph.ts and storage.ts both use it without importing each other for it. */
export function cumulative(edges: readonly { readonly child: string; readonly perm: PermSet; readonly shared: PermSet }[], node: string): { perm: PermSet; shared: PermSet } {
  let perm = NONE;
  let shared = ALL;
  for (const e of edges) {
    if (e.child !== node) continue;
    perm |= e.perm;
    shared &= e.shared;
  }
  return { perm, shared };
}
