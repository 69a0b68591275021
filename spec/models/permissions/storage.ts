// Storage identity in the block graph: a `file` node opens a storage (the image file; the
// reference identifies it by device and inode, the model by a name); two protocol nodes over one
// storage are aliases, and so are the format nodes stacked on them. Node-keyed checks (parent
// conflicts, request serialisation, copy-before-write's interception) cannot see that a write
// through one alias changes what a reader of the other sees.
//
// Three storage rules (ModelOptions.storage):
//   - 'none': every protocol node is its own storage (the reference before storage identity);
//   - 'locking': QEMU's image locking (block/file-posix.c raw_check_lock_bytes, locking=on,
//     which locking=auto is on Linux with OFD locks): each file node locks one byte per
//     permission it holds and one per permission it does not share, and fails when another
//     open file description holds the opposite byte. OFD locks conflict between two fds of one
//     process too, so two file nodes of one daemon over one file check each other;
//   - 'storage-aware': what the reference is to do. Permissions are checked across all the
//     nodes that open one storage as if they were one node (the same pairs locking compares,
//     with a message naming nodes and file), and a graph in which a snapshot reader can see a
//     write that copy-before-write or the backup job's serialisation does not see is refused.
import type { Edge, GraphState, NodeState, Parent } from './graph.ts';
import { allows, cumulative, permText, WRITE, type PermSet } from './perm.ts';

export type StorageRule = 'none' | 'locking' | 'storage-aware';

// ---------------------------------------------------------------------------------------------
// Graph queries (over the plain-data graph state)

type G = Pick<GraphState, 'nodes' | 'edges' | 'exports'>;

export function childOf(g: G, node: string, name: string): string | undefined {
  return g.edges.find((e) => e.parent.kind === 'node' && e.parent.node === node && e.name === name)?.child;
}

export function driverOf(g: G, node: string): NodeState['driver'] | undefined {
  return g.nodes.find((n) => n.name === node)?.driver;
}

/** The storage a node's data lives in: a file node's own; a format node's, a raw filter's or a
 * copy-before-write filter's is their file child's (cbw reads pass to it). snapshot-access is
 * a view of the snapshot, not of one storage: undefined. */
export function storageOf(g: G, node: string, seen: ReadonlySet<string> = new Set()): string | undefined {
  if (seen.has(node)) return undefined;
  const n = g.nodes.find((x) => x.name === node);
  if (n === undefined) return undefined;
  if (n.driver === 'file') return n.storage;
  if (n.driver === 'qcow2' || n.driver === 'raw' || n.driver === 'copy-before-write') {
    const f = childOf(g, node, 'file');
    return f === undefined ? undefined : storageOf(g, f, new Set([...seen, node]));
  }
  return undefined;
}

/** The image nodes over one storage: its file nodes and the qcow2 nodes stacked on them. Raw
 * filters and cbw pass data through but are users of the image, not the image. */
export function viewsOf(g: G, storage: string): Set<string> {
  const out = new Set<string>();
  for (const n of g.nodes) if ((n.driver === 'file' || n.driver === 'qcow2') && storageOf(g, n.name) === storage) out.add(n.name);
  return out;
}

/** The node and its `file` descendants: where the node's own data lives by node identity. */
export function store(g: G, node: string): Set<string> {
  const out = new Set<string>();
  const go = (n: string): void => {
    if (out.has(n)) return;
    out.add(n);
    for (const e of g.edges) if (e.parent.kind === 'node' && e.parent.node === n && e.name === 'file') go(e.child);
  };
  go(node);
  return out;
}

export function backingChain(g: G, node: string): string[] {
  const out: string[] = [];
  for (let b = childOf(g, node, 'backing'); b !== undefined && !out.includes(b); b = childOf(g, b, 'backing')) out.push(b);
  return out;
}

export const edgeName = (e: Edge): string => {
  const p: Parent = e.parent;
  const who = p.kind === 'node' ? p.node : p.kind === 'export' ? `export ${p.id}` : p.kind === 'blk' ? 'a block device' : `job ${p.id}`;
  return `${who} -> ${e.child} (${e.name})`;
};

// ---------------------------------------------------------------------------------------------
// Snapshot readers (docs/requirements/qemu-fleecing.md §1.5 modern and legacy shapes)

/** A write into a snapshot's storage that the protection does not see. `via` is the node the
 * write enters the storage's image through; `alias` when that node is not the one cbw guards
 * (or copies into) but another node over the same storage. */
export interface ForeignWriter {
  readonly edge: string;
  readonly via: string;
  readonly storage: string;
  readonly alias: boolean;
}

/** How the snapshot reader's reads meet the serialisation that keeps them consistent. */
export type ReadPath =
  /** S4 (cbw reqlists), or S3 with the copies serialising against the reader's tracked reads. */
  | 'guarded'
  /** S3 shape, but the cbw target's backing chain holds an alias of cbw's source, not the node:
   * block_copy_state_new's is_fleecing (bdrv_chain_contains) is false, so the copies to the
   * target are not serialising (the seed race, S1). */
  | 'alias-backing'
  /** S3 shape read through an alias of the target: the reads are tracked on the alias, the
   * serialising copies wait only for requests tracked on the target node. */
  | 'alias-target';

export interface SnapshotReader {
  readonly exportId: string;
  /** 'S3': export on a temp overlay backed by cbw's source; 'S4': snapshot-access over cbw. */
  readonly scheme: 'S3' | 'S4';
  readonly cbw: string;
  readonly source: string;
  readonly target: string;
  readonly sourceStorage: string | undefined;
  readonly targetStorage: string | undefined;
  readonly readPath: ReadPath;
  /** The node the export reads when not the target itself, or the alias in the backing chain. */
  readonly readVia?: string;
  /** Edges that write through cbw (guest writes, copied before they land). */
  readonly guestWriters: readonly string[];
  /** Edges with WRITE on the target or below it, other than cbw's own (by node identity). */
  readonly tempWriters: readonly string[];
  /** Edges with WRITE on the source or below it that do not go through cbw (by node identity). */
  readonly sourceBypassWriters: readonly string[];
  /** Writes into the target's or the source's storage through another node over it. */
  readonly aliasTempWriters: readonly ForeignWriter[];
  readonly aliasSourceWriters: readonly ForeignWriter[];
}

/** Writers into `storage` from outside its image nodes, except `except`; `direct` is the node
 * set that counts as the guarded node itself. */
function storageWriters(g: G, storage: string | undefined, direct: Set<string>, except: (e: Edge) => boolean): { direct: string[]; alias: ForeignWriter[] } {
  const within = storage === undefined ? new Set(direct) : new Set([...viewsOf(g, storage), ...direct]);
  const out = { direct: [] as string[], alias: [] as ForeignWriter[] };
  for (const e of g.edges) {
    if (!within.has(e.child) || (e.perm & WRITE) === 0 || except(e)) continue;
    if (e.parent.kind === 'node' && within.has(e.parent.node)) continue;
    // A cbw always holds WRITE on its target, but writes there only to copy before a write it
    // intercepts: with no writing parent it writes nothing.
    if (e.name === 'target' && e.parent.kind === 'node' && driverOf(g, e.parent.node) === 'copy-before-write') {
      const cbw = e.parent.node;
      if (!g.edges.some((p) => p.child === cbw && (p.perm & WRITE) !== 0)) continue;
    }
    if (direct.has(e.child)) out.direct.push(edgeName(e));
    else out.alias.push({ edge: edgeName(e), via: e.child, storage: storage ?? e.child, alias: true });
  }
  return out;
}

const isEdgeOf = (e: Edge, node: string, name: string): boolean => e.parent.kind === 'node' && e.parent.node === node && e.name === name;

/** Snapshot readers of an accepted graph, with storage identity: a legacy reader is an export
 * on an image over the cbw target's storage whose backing chain reaches the cbw source's
 * storage, whichever nodes carry them. */
export function snapshotReaders(g: G): SnapshotReader[] {
  const out: SnapshotReader[] = [];
  const cbws = g.nodes.filter((n) => n.driver === 'copy-before-write').map((n) => n.name);
  for (const ex of g.exports) {
    // Look through raw filters: they pass reads down unchanged.
    let node = ex.nodeName;
    while (driverOf(g, node) === 'raw') node = childOf(g, node, 'file') ?? node;
    let found: { scheme: 'S3' | 'S4'; cbw: string; readPath: ReadPath; readVia?: string } | undefined;
    if (driverOf(g, node) === 'snapshot-access') {
      const c = childOf(g, node, 'file');
      if (c !== undefined && driverOf(g, c) === 'copy-before-write') found = { scheme: 'S4', cbw: c, readPath: 'guarded' };
    } else {
      const st = storageOf(g, node);
      for (const c of cbws) {
        const src = childOf(g, c, 'file');
        const tgt = childOf(g, c, 'target');
        if (src === undefined || tgt === undefined || st === undefined) continue;
        const srcSt = storageOf(g, src);
        if (storageOf(g, tgt) !== st) continue;
        const backing = backingChain(g, node).find((b) => b === src || (srcSt !== undefined && storageOf(g, b) === srcSt));
        if (backing === undefined) continue;
        // is_fleecing looks at the target node's chain, by node identity.
        const isFleecing = backingChain(g, tgt).includes(src);
        found = !isFleecing
          ? { scheme: 'S3', cbw: c, readPath: 'alias-backing', readVia: backingChain(g, tgt).find((b) => srcSt !== undefined && storageOf(g, b) === srcSt) ?? backing }
          : node !== tgt
            ? { scheme: 'S3', cbw: c, readPath: 'alias-target', readVia: node }
            : { scheme: 'S3', cbw: c, readPath: 'guarded' };
        break;
      }
    }
    if (found === undefined) continue;
    const source = childOf(g, found.cbw, 'file')!;
    const target = childOf(g, found.cbw, 'target')!;
    const sourceStorage = storageOf(g, source);
    const targetStorage = storageOf(g, target);
    const cbw = found.cbw;
    const src = storageWriters(g, sourceStorage, store(g, source), (e) => isEdgeOf(e, cbw, 'file'));
    const tmp = storageWriters(g, targetStorage, store(g, target), (e) => isEdgeOf(e, cbw, 'target'));
    out.push({
      exportId: ex.id,
      scheme: found.scheme,
      cbw,
      source,
      target,
      sourceStorage,
      targetStorage,
      readPath: found.readPath,
      ...(found.readVia !== undefined ? { readVia: found.readVia } : {}),
      guestWriters: g.edges.filter((e) => e.child === cbw && (e.perm & WRITE) !== 0).map(edgeName),
      // cbw's own writes (its file child, or its target child when that aliases the source)
      // are writers of the other storage only when they land there through an alias.
      tempWriters: tmp.direct,
      sourceBypassWriters: src.direct,
      aliasTempWriters: tmp.alias,
      aliasSourceWriters: src.alias,
    });
  }
  return out;
}

/** Why a reader's snapshot is not protected, in one sentence naming nodes, file and path;
 * undefined when nothing bypasses the protection.
 *
 * `reachable` keeps only what can reach the reader in the graph as it is: a write into the
 * target under snapshot-access (S4) is only read back once a guest write has had a cluster
 * copied, and the unserialised or untracked legacy paths only race with copies, so without a
 * writer through cbw these are not yet hazards. The storage-aware rule uses this form: it runs
 * after every command, so the command that adds the first guest writer is the one refused. */
export function readerHazard(r: SnapshotReader, reachable = false): string | undefined {
  const file = (s: string | undefined) => (s === undefined ? '' : ` (file '${s}')`);
  const copies = !reachable || r.guestWriters.length > 0;
  const targetRead = copies || r.scheme === 'S3';
  if (r.readPath === 'alias-backing' && copies) {
    return `export '${r.exportId}' reads the snapshot of '${r.source}'${file(r.sourceStorage)} through '${r.target}' -> backing '${r.readVia}', another node over that file: the copies of '${r.cbw}' are not serialised against those reads, so a write through '${r.source}' can reach the reader first`;
  }
  if (r.readPath === 'alias-target' && copies) {
    return `export '${r.exportId}' reads the snapshot kept in '${r.target}'${file(r.targetStorage)} through '${r.readVia}', another node over that file: the copies of '${r.cbw}' into '${r.target}' do not wait for those reads`;
  }
  const w = [...r.aliasSourceWriters, ...(targetRead ? r.aliasTempWriters : [])][0];
  if (w !== undefined) {
    const whose = r.aliasSourceWriters.includes(w) ? `the snapshot of '${r.source}'` : `the snapshot kept in '${r.target}'`;
    return `export '${r.exportId}' reads ${whose}, whose file '${w.storage}' is written through '${w.via}', another node over it, bypassing copy-before-write: ${w.edge}`;
  }
  if (r.sourceBypassWriters.length > 0) {
    return `export '${r.exportId}' reads a snapshot of '${r.source}', which a user may write without copy-before-write: ${r.sourceBypassWriters.join('; ')}`;
  }
  if (r.tempWriters.length > 0 && targetRead) {
    return `export '${r.exportId}' reads a snapshot kept in '${r.target}', which another user may write: ${r.tempWriters.join('; ')}`;
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// The storage checks

export interface StorageRefusal {
  readonly node: string;
  readonly storage: string;
  readonly perms: PermSet;
  readonly message: string;
}

function parentDesc(p: Parent): string {
  return p.kind === 'node' ? `node '${p.node}'` : p.kind === 'export' ? `export '${p.id}'` : p.kind === 'job' || p.kind === 'job-blk' ? `job '${p.id}'` : 'a block device';
}

/** Pairs of file nodes over one storage whose permissions conflict, checked for the nodes of
 * `changed` (the ones whose cumulative permissions the command changed, or that it added): a
 * file node cannot take a permission another unshares, nor unshare one another holds. */
export function storageConflict(g: G, rule: StorageRule, changed: ReadonlySet<string>): StorageRefusal | undefined {
  if (rule === 'none') return undefined;
  const files = g.nodes.filter((n) => n.driver === 'file');
  for (const b of files) {
    if (!changed.has(b.name)) continue;
    const cb = cumulative(g.edges, b.name);
    for (const a of files) {
      if (a === b || a.storage !== b.storage) continue;
      const ca = cumulative(g.edges, a.name);
      const takes = cb.perm & ~ca.shared; // b needs what a unshares
      const unshares = ca.perm & ~cb.shared; // b unshares what a holds
      if (takes === 0 && unshares === 0) continue;
      if (rule === 'locking') {
        // raw_check_lock_bytes: the permission bytes first, then the shared bytes; one bit named.
        const bit = lowestBit(takes !== 0 ? takes : unshares);
        const message = takes !== 0 ? `Failed to get "${permText(bit)}" lock` : `Failed to get shared "${permText(bit)}" lock`;
        return { node: b.name, storage: b.storage, perms: bit, message };
      }
      const perms = takes !== 0 ? takes : unshares;
      const [needer, holder] = takes !== 0 ? [b.name, a.name] : [a.name, b.name];
      const req = g.edges.find((e) => e.child === needer && (e.perm & perms) !== 0);
      const uns = g.edges.find((e) => e.child === holder && !allows(e.shared, perms));
      return {
        node: b.name,
        storage: b.storage,
        perms,
        message:
          `Permission conflict on file '${b.storage}' (opened by nodes '${a.name}' and '${b.name}'): permissions '${permText(perms)}' are ` +
          `required by ${req ? parentDesc(req.parent) : 'a user'} (through node '${needer}') and unshared by ${uns ? parentDesc(uns.parent) : 'a user'} (through node '${holder}')`,
      };
    }
  }
  return undefined;
}

/** File nodes the step from `before` to `after` added or whose cumulative permissions it changed. */
export function changedFileNodes(before: G, after: G): Set<string> {
  const out = new Set<string>();
  for (const n of after.nodes) {
    if (n.driver !== 'file') continue;
    if (!before.nodes.some((b) => b.name === n.name)) {
      out.add(n.name);
      continue;
    }
    const a = cumulative(after.edges, n.name);
    const b = cumulative(before.edges, n.name);
    if (a.perm !== b.perm || a.shared !== b.shared) out.add(n.name);
  }
  return out;
}

function lowestBit(p: PermSet): PermSet {
  return p & -p;
}
