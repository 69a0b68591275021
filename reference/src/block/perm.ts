// Block permissions: QEMU 7.2's four bits (docs/requirements/qemu-fleecing.md §1.1) and the default child-permission
// rules of block.c (§1.3). An edge's `perm` is what the parent uses on the child; its `shared` is
// what the parent tolerates other parents doing.

export const PERM = {
  CONSISTENT_READ: 0x01,
  WRITE: 0x02,
  WRITE_UNCHANGED: 0x04,
  RESIZE: 0x08,
} as const;

export const PERM_ALL = 0x0f;
/** DEFAULT_PERM_PASSTHROUGH: what a filter passes through unchanged. */
export const PERM_PASSTHROUGH = PERM.CONSISTENT_READ | PERM.WRITE | PERM.WRITE_UNCHANGED | PERM.RESIZE;
/** DEFAULT_PERM_UNCHANGED = ALL & ~PASSTHROUGH: zero since GRAPH_MOD went away in 6.2. */
export const PERM_UNCHANGED = PERM_ALL & ~PERM_PASSTHROUGH;

const NAMES: ReadonlyArray<readonly [number, string]> = [
  [PERM.CONSISTENT_READ, 'consistent-read'],
  [PERM.WRITE, 'write'],
  [PERM.WRITE_UNCHANGED, 'write-unchanged'],
  [PERM.RESIZE, 'resize'],
];

/** Names in bit order, joined as QEMU's bdrv_perm_names does for error messages. */
export function permNames(perm: number): string {
  return permList(perm).join(', ');
}

export function permList(perm: number): string[] {
  return NAMES.filter(([bit]) => perm & bit).map(([, name]) => name);
}

/** The order x-debug-query-block-graph lists them in (QAPI lists are built by prepending, so
 * QEMU 7.2 prints the highest bit first: measured, docs/requirements/qemu-fleecing.md §1.5). */
export function permListQapi(perm: number): string[] {
  return permList(perm).reverse();
}

export function permFromNames(names: readonly string[]): number {
  let p = 0;
  for (const n of names) {
    const hit = NAMES.find(([, name]) => name === n);
    if (!hit) throw new Error(`unknown permission name '${n}'`);
    p |= hit[0];
  }
  return p;
}

export interface PermPair {
  readonly perm: number;
  readonly shared: number;
}

/** The role of a child edge (BdrvChildRole), reduced to what the permission rules look at. */
export type ChildRole = 'filtered' | 'cow' | 'data' | 'data+metadata';

/** bdrv_filter_default_perms: a filter is transparent. */
export function filterDefaultPerms(perm: number, shared: number): PermPair {
  return {
    perm: perm & PERM_PASSTHROUGH,
    shared: (shared & PERM_PASSTHROUGH) | PERM_UNCHANGED,
  };
}

/** bdrv_default_perms_for_cow: a node only reads its backing, and lets others write it only if its
 * own parents share WRITE (that is what lets the guest keep writing the source under the legacy
 * temp overlay, §1.3). */
export function cowDefaultPerms(perm: number, shared: number): PermPair {
  const nperm = perm & PERM.CONSISTENT_READ;
  let nshared = shared & PERM.WRITE ? PERM.WRITE | PERM.RESIZE : 0;
  nshared |= PERM.CONSISTENT_READ | PERM.WRITE_UNCHANGED;
  return { perm: nperm, shared: nshared };
}

/** bdrv_default_perms_for_storage: the file child of a format driver. */
export function storageDefaultPerms(
  perm: number,
  shared: number,
  opts: { metadata: boolean; writable: boolean },
): PermPair {
  let { perm: nperm, shared: nshared } = filterDefaultPerms(perm, shared);
  if (opts.metadata) {
    if (opts.writable) nperm |= PERM.WRITE | PERM.RESIZE;
    nperm |= PERM.CONSISTENT_READ;
    nshared &= ~(PERM.WRITE | PERM.RESIZE);
  }
  // DATA rules
  nshared &= ~PERM.RESIZE;
  if (nperm & PERM.WRITE_UNCHANGED) nperm |= PERM.WRITE;
  if (nperm & PERM.WRITE) nperm |= PERM.RESIZE;
  return { perm: nperm, shared: nshared };
}

/** bdrv_default_perms: dispatch on the role. */
export function defaultPerms(
  role: ChildRole,
  perm: number,
  shared: number,
  writable: boolean,
): PermPair {
  switch (role) {
    case 'filtered':
      return filterDefaultPerms(perm, shared);
    case 'cow':
      return cowDefaultPerms(perm, shared);
    case 'data':
      return storageDefaultPerms(perm, shared, { metadata: false, writable });
    case 'data+metadata':
      return storageDefaultPerms(perm, shared, { metadata: true, writable });
  }
}
