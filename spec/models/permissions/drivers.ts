// Each driver's child-permission rule (.bdrv_child_perm), as pure functions of the node's
// cumulative (perm, shared) pair. docs/requirements/qemu-fleecing.md §1.3 (block.c defaults), §1.5 (cbw,
// snapshot-access, measured on 7.2) and §6 B2 (the 9.1 cbw fix).
import { match } from 'ts-pattern';
import {
  ALL,
  CONSISTENT_READ,
  NONE,
  PASSTHROUGH,
  RESIZE,
  UNCHANGED,
  WRITE,
  WRITE_UNCHANGED,
  type PermSet,
} from './perm.ts';

/** BdrvChildRole bits (include/block/block-common.h). */
export const ROLE_DATA = 0x01;
export const ROLE_METADATA = 0x02;
export const ROLE_FILTERED = 0x04;
export const ROLE_COW = 0x08;
export const ROLE_PRIMARY = 0x10;
export type Role = number;

export function roleNames(role: Role): string[] {
  const out: string[] = [];
  if (role & ROLE_DATA) out.push('DATA');
  if (role & ROLE_METADATA) out.push('METADATA');
  if (role & ROLE_FILTERED) out.push('FILTERED');
  if (role & ROLE_COW) out.push('COW');
  if (role & ROLE_PRIMARY) out.push('PRIMARY');
  return out;
}

/** The drivers of docs/requirements/qemu-fleecing.md §1 that fleecing graphs are built from. */
export type Driver = 'file' | 'qcow2' | 'raw' | 'copy-before-write' | 'snapshot-access';
export const DRIVERS: readonly Driver[] = ['file', 'qcow2', 'raw', 'copy-before-write', 'snapshot-access'];

/** Which cbw_child_perm to model. Both only act once cbw has a parent. 7.2 adds
 * CONSISTENT_READ on the source only when a parent writes (bug B2) and unshares WRITE|RESIZE;
 * the 9.1 fix adds CONSISTENT_READ whenever cbw has any parent. docs/requirements/qemu-fleecing.md §1.5 notes, §6 B2. `buggy-no-unshare` is a known-bad variant
 * that forgets to unshare WRITE on the source: the tests must catch it. */
export type CbwRule = '7.2' | '9.1' | 'buggy-no-unshare';

/** What a driver's rule may look at besides the cumulative pair. */
export interface ChildPermContext {
  readonly driver: Driver;
  /** The child edge's role and name ('file', 'backing', 'target'). */
  readonly role: Role;
  readonly childName: string;
  /** The node is writable (not opened read-only): bdrv_is_writable_after_reopen. */
  readonly writable: boolean;
  /** The node has at least one parent (QLIST_EMPTY(&bs->parents) is false). */
  readonly hasParents: boolean;
  readonly cbwRule: CbwRule;
}

export interface PermPair {
  readonly perm: PermSet;
  readonly shared: PermSet;
}

/** bdrv_filter_default_perms: a filter is transparent. */
export function filterDefaults(perm: PermSet, shared: PermSet): PermPair {
  return { perm: perm & PASSTHROUGH, shared: (shared & PASSTHROUGH) | UNCHANGED };
}

/** bdrv_default_perms_for_cow: a node only reads its backing file, and lets others write it
 * only if its own parents let others write (docs/requirements/qemu-fleecing.md §1.3). */
export function cowDefaults(perm: PermSet, shared: PermSet): PermPair {
  let nshared = (shared & WRITE) !== 0 ? WRITE | RESIZE : NONE;
  nshared |= CONSISTENT_READ | WRITE_UNCHANGED;
  return { perm: perm & CONSISTENT_READ, shared: nshared };
}

/** bdrv_default_perms_for_storage: the file child of a format driver (docs/requirements/qemu-fleecing.md §1.3). */
export function storageDefaults(role: Role, writable: boolean, perm: PermSet, shared: PermSet): PermPair {
  let { perm: p, shared: s } = filterDefaults(perm, shared);
  if (role & ROLE_METADATA) {
    // Format drivers touch metadata even when the guest does not write.
    if (writable) p |= WRITE | RESIZE;
    p |= CONSISTENT_READ; // never opened with BDRV_O_NO_IO here
    s &= ~(WRITE | RESIZE);
  }
  if (role & ROLE_DATA) {
    s &= ~RESIZE;
    if (p & WRITE_UNCHANGED) p |= WRITE;
    if (p & WRITE) p |= RESIZE;
  }
  return { perm: p, shared: s };
}

/** bdrv_default_perms: dispatch on the role. */
export function defaultPerms(role: Role, writable: boolean, perm: PermSet, shared: PermSet): PermPair {
  if (role & ROLE_FILTERED) return filterDefaults(perm, shared);
  if (role & ROLE_COW) return cowDefaults(perm, shared);
  if (role & (ROLE_DATA | ROLE_METADATA)) return storageDefaults(role, writable, perm, shared);
  throw new RangeError(`child role ${roleNames(role).join('|') || '0'} has no default permissions`);
}

/** cbw_child_perm (block/copy-before-write.c), in the form selected by `rule`. */
export function cbwChildPerm(ctx: ChildPermContext, perm: PermSet, shared: PermSet): PermPair {
  if (!(ctx.role & ROLE_FILTERED)) {
    // Target child: cbw writes old data into it and shares write so that guest writes to a
    // disk in the target's backing chain still work; no resize (the size is checked upfront).
    return { perm: WRITE, shared: ALL & ~RESIZE };
  }
  const d = defaultPerms(ctx.role, ctx.writable, perm, shared);
  // No parents yet: the filter is being inserted (bdrv_insert_node opens it before moving the
  // source's parents onto it) or was blockdev-add'ed alone; it takes nothing extra then, or the
  // insertion would conflict with the very writer it is about to intercept (6.2 "relax
  // restrictions when filter doesn't have any parent").
  if (!ctx.hasParents) return d;
  return match(ctx.cbwRule)
    .with('7.2', () => ({
      // 7.2: CONSISTENT_READ only when a parent writes (bug B2); unshare WRITE|RESIZE.
      perm: (perm & WRITE) !== 0 ? d.perm | CONSISTENT_READ : d.perm,
      shared: d.shared & ~(WRITE | RESIZE),
    }))
    // 9.1 "block/copy-before-write: fix permission": CONSISTENT_READ whenever cbw has a parent.
    .with('9.1', () => ({ perm: d.perm | CONSISTENT_READ, shared: d.shared & ~(WRITE | RESIZE) }))
    .with('buggy-no-unshare', () => ({
      perm: (perm & WRITE) !== 0 ? d.perm | CONSISTENT_READ : d.perm,
      shared: d.shared & ~RESIZE,
    }))
    .exhaustive();
}

/** The roles a driver gives to each of its child names, and which names are required. */
export interface ChildSlot {
  readonly name: string;
  readonly role: Role;
  readonly required: boolean;
}

export function childSlots(driver: Driver): readonly ChildSlot[] {
  return match(driver)
    .with('file', () => [])
    .with('qcow2', () => [
      // qcow2 stores data and metadata in its file (BDRV_CHILD_IMAGE | PRIMARY).
      { name: 'file', role: ROLE_DATA | ROLE_METADATA | ROLE_PRIMARY, required: true },
      { name: 'backing', role: ROLE_COW, required: false },
    ])
    .with('raw', () => [{ name: 'file', role: ROLE_FILTERED | ROLE_PRIMARY, required: true }])
    .with('copy-before-write', () => [
      { name: 'file', role: ROLE_FILTERED | ROLE_PRIMARY, required: true },
      { name: 'target', role: ROLE_DATA, required: true },
    ])
    // snapshot_access_child_perm ignores the role: 0 / ALL whatever it is.
    .with('snapshot-access', () => [{ name: 'file', role: ROLE_DATA | ROLE_PRIMARY, required: true }])
    .exhaustive();
}

/** The driver's .bdrv_child_perm for one child, given the node's cumulative pair. */
export function childPerm(ctx: ChildPermContext, perm: PermSet, shared: PermSet): PermPair {
  return match(ctx.driver)
    .with('file', () => {
      throw new RangeError('the file protocol driver has no children');
    })
    .with('qcow2', 'raw', () => defaultPerms(ctx.role, ctx.writable, perm, shared))
    .with('copy-before-write', () => cbwChildPerm(ctx, perm, shared))
    // snapshot_access_child_perm: it only uses the snapshot API, so it takes nothing and
    // shares everything (docs/requirements/qemu-fleecing.md §1.5).
    .with('snapshot-access', () => ({ perm: NONE, shared: ALL }))
    .exhaustive();
}
