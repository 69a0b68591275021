// Storage identity: two protocol nodes that open one file are one disk. A node's storage is the
// file's device and inode (fstat after open), never its path: a symlink, a `..` or a hard link
// name the same storage. What the permission system and the request serialisation key on is
// node identity, so over aliases they see nothing; this module closes that, at every graph
// change (BlockGraph.refreshPerms):
//
// 1. Permissions across aliases. The nodes over one storage are checked as if they were one
//    node: each node's cumulative (perm, shared) against every other's. This is the check QEMU's
//    image locking makes between two file descriptors of one file (file-posix's
//    raw_check_lock_bytes; OFD locks conflict between descriptors even in one process), and
//    the refusal starts with QEMU 7.2's message for it: `Failed to get "write" lock` (the node
//    wants a permission another does not share) or `Failed to get shared "write" lock` (it
//    does not share what another holds).
// 2. Snapshot bypass. A copy-before-write node keeps its target an unchanging snapshot only
//    for reads that reach the source through the node it filters: there its own writes are
//    copied first, and its copies into a target whose chain contains the source are serialising
//    (block_copy_state_new's bdrv_chain_contains; the legacy temp overlay relies on it). A
//    target whose children reach the source's storage by another node (the legacy temp image
//    backed by a second `file` node over the source's file) reads the live file with neither:
//    the snapshot then shows the guest's post-snapshot writes. While anyone can write that
//    storage, the graph is refused, naming the nodes, the file and the bypassing path. Readers
//    of a file no one writes stay accepted: nothing can change under them.
//
// `memory` nodes have no storage identity: their storage comes into being with the node and
// has no name another node could open, so each is its own storage and never an alias.
// The UNSAFE `x-no-storage-identity` option of `file` gives that node private storage too (the
// state before this module): tests and the `reference-no-storage-identity` target use it to
// show the checks failing.
import { BlockError } from './errors.ts';
import type { BlockNode } from './node.ts';
import { PERM, PERM_ALL, permList } from './perm.ts';

/** What identifies a node's storage: equal keys are one disk. */
export interface StorageIdentity {
  /** `dev:ino` of the open file. */
  readonly key: string;
  /** For messages: the file as this node opened it, and its device and inode. */
  readonly file: string;
  readonly dev: string;
  readonly ino: string;
}

interface Cumulative {
  perm: number;
  shared: number;
}

/** A node's permissions on its storage: the union of its parents' perm, the intersection of
 * their shared (what file-posix locks for the node). */
function cumulative(node: BlockNode): Cumulative {
  let perm = 0;
  let shared = PERM_ALL;
  for (const p of node.parents) {
    perm |= p.perm;
    shared &= p.shared;
  }
  return { perm, shared };
}

const where = (s: StorageIdentity) => `file '${s.file}' (device ${s.dev}, inode ${s.ino})`;

/** The nodes of the graph grouped by storage; only storages opened by two nodes or more. */
export function aliasGroups(nodes: Iterable<BlockNode>): Map<string, BlockNode[]> {
  const groups = new Map<string, BlockNode[]>();
  for (const n of nodes) {
    const s = n.storage();
    if (!s) continue;
    const g = groups.get(s.key);
    if (g) g.push(n);
    else groups.set(s.key, [n]);
  }
  for (const [k, g] of groups) if (g.length < 2) groups.delete(k);
  return groups;
}

/**
 * Checks one graph's aliases; throws a BlockError (EPERM) on the first conflict or bypass.
 * `committed` holds each node's cumulative permissions as of the last accepted graph: the node
 * whose permissions changed is the one "taking the lock", as in QEMU, where the node being
 * opened or updated is the one refused.
 */
export class StorageChecker {
  private committed = new WeakMap<BlockNode, Cumulative>();

  check(nodes: readonly BlockNode[]): void {
    const groups = aliasGroups(nodes);
    for (const group of groups.values()) this.checkPerms(group);
    for (const node of nodes) if (node.driver === 'copy-before-write') this.checkBypass(node, nodes);
  }

  /** Records the accepted graph's permissions (after a successful transaction). */
  commit(nodes: readonly BlockNode[]): void {
    this.committed = new WeakMap();
    for (const n of nodes) if (n.storage()) this.committed.set(n, cumulative(n));
  }

  private changed(n: BlockNode): boolean {
    const was = this.committed.get(n);
    const now = cumulative(n);
    return !was || was.perm !== now.perm || was.shared !== now.shared;
  }

  private checkPerms(group: readonly BlockNode[]): void {
    // The node taking the lock: one whose permissions changed, newest first (creation order).
    const order = [...group].reverse().sort((a, b) => Number(this.changed(b)) - Number(this.changed(a)));
    for (const taker of order) {
      const t = cumulative(taker);
      for (const holder of group) {
        if (holder === taker) continue;
        const h = cumulative(holder);
        const s = taker.storage()!;
        const wanted = t.perm & ~h.shared;
        if (wanted) {
          const name = permList(wanted)[0]!;
          throw new BlockError(
            'EPERM',
            `Failed to get "${name}" lock: node '${taker.nodeName}' needs '${name}' on ${where(s)}, which node '${holder.nodeName}' opens too and does not share (nodes over one file are one disk)`,
            { node: taker.nodeName },
          );
        }
        const unshared = h.perm & ~t.shared;
        if (unshared) {
          const name = permList(unshared)[0]!;
          throw new BlockError(
            'EPERM',
            `Failed to get shared "${name}" lock: node '${taker.nodeName}' does not share '${name}' on ${where(s)}, which node '${holder.nodeName}' opens too and uses (nodes over one file are one disk)`,
            { node: taker.nodeName },
          );
        }
      }
    }
  }

  /** Copy-before-write `cbw`: can a reader of its snapshot see a write that bypasses it? */
  private checkBypass(cbw: BlockNode, nodes: readonly BlockNode[]): void {
    const file = cbw.children.find((c) => c.name === 'file')?.node;
    const target = cbw.children.find((c) => c.name === 'target')?.node;
    if (!file || !target) return;
    const writersOf = (key: string, except: ReadonlySet<BlockNode>) =>
      nodes.filter((m) => !except.has(m) && m.storage()?.key === key && cumulative(m).perm & PERM.WRITE);
    const names = (ns: readonly BlockNode[]) => ns.map((w) => `node '${w.nodeName}'`).join(', ');

    // (a) Where cbw's copies land: the target and its data children (not its backing, which is
    // only read). Another writer of that storage changes the snapshot behind cbw's back.
    const store = storagesBelow(target, (c) => c.role !== 'cow');
    for (const [key, holder] of store.byKey) {
      const writers = writersOf(key, store.nodes);
      if (writers.length > 0) {
        throw new BlockError(
          'EPERM',
          `copy-before-write node '${cbw.nodeName}' keeps its snapshot in ${where(holder.storage()!)} (node '${holder.nodeName}' under its target '${target.nodeName}'), ` +
            `which ${names(writers)} also opens and writes: those writes bypass copy-before-write and change the snapshot`,
          { node: cbw.nodeName },
        );
      }
    }

    // (b) A target read other than through cbw's snapshot API (the legacy temp image, read by
    // the export and held by the backup job) falls through to its backing for what cbw has not
    // copied. If that reaches the source's storage by another node than the one cbw filters,
    // the read sees the guest's writes with no copy first and no serialisation against it.
    const readOutside = target.parents.some((e) => e.parent !== cbw);
    if (!readOutside) return;
    const source = storagesBelow(file, () => true);
    if (source.byKey.size === 0) return;
    const path: BlockNode[] = [];
    const seen = new Set<BlockNode>();
    const walk = (n: BlockNode): void => {
      if (n === file || seen.has(n)) return;
      seen.add(n);
      path.push(n);
      const s = n.storage();
      const src = s && source.byKey.get(s.key);
      if (s && src) {
        const writers = writersOf(s.key, new Set());
        if (writers.length > 0) {
          const route = path.map((m) => `'${m.nodeName}'`).join(' -> ');
          throw new BlockError(
            'EPERM',
            `copy-before-write node '${cbw.nodeName}' cannot keep its target '${target.nodeName}' a snapshot of '${file.nodeName}': ` +
              `reads of the target reach ${where(s)} by ${route}, not through '${file.nodeName}', and that file is the storage of node '${src.nodeName}' under the source, ` +
              `written through ${names(writers)}; those reads bypass copy-before-write and the serialisation of its copies into the target, ` +
              `so they can return data written after the snapshot (use '${file.nodeName}' itself in the target's chain)`,
            { node: cbw.nodeName },
          );
        }
      }
      for (const c of n.children) walk(c.node);
      path.pop();
    };
    walk(target);
  }
}

/** The protocol nodes at or below `top` through the children `follow` accepts, by storage. */
function storagesBelow(top: BlockNode, follow: (c: BlockNode['children'][number]) => boolean): { byKey: Map<string, BlockNode>; nodes: Set<BlockNode> } {
  const byKey = new Map<string, BlockNode>();
  const nodes = new Set<BlockNode>();
  const visit = (n: BlockNode): void => {
    if (nodes.has(n)) return;
    nodes.add(n);
    const s = n.storage();
    if (s && !byKey.has(s.key)) byKey.set(s.key, n);
    for (const c of n.children) if (follow(c)) visit(c.node);
  };
  visit(top);
  return { byKey, nodes };
}
