// The block graph: named nodes, edges with permissions, root users, jobs. Every change runs as a
// transaction: the structure changes, permissions are refreshed top-down in topological order
// (bdrv_refresh_perms), every node's parents are checked pairwise (bdrv_parent_perms_conflict),
// and a failure rolls the whole change back (docs/requirements/qemu-fleecing.md §1.2-§1.4).
import { EventEmitter } from 'node:events';
import { BackendImpl, type RootParent } from './backend.ts';
import { BackupJob, type BackupOptions } from './backup.ts';
import { Breakpoints } from './breakpoints.ts';
import { BlockError } from './errors.ts';
import { DRIVER_HINTS, DRIVERS } from './drivers/index.ts';
import type { DriverContext, DriverFactory } from './drivers/registry.ts';
import { BdrvChild, BlockNode, type NodeCommonOptions, type Parent } from './node.ts';
import { OptionReader } from './options.ts';
import { PERM, PERM_ALL, permListQapi, permNames, type ChildRole } from './perm.ts';
import { StorageChecker } from './storage.ts';

/** Undo log of one graph change. */
export class Transaction {
  private readonly undo: Array<() => void> = [];
  onAbort(f: () => void): void {
    this.undo.push(f);
  }
  rollback(): void {
    for (const f of this.undo.reverse()) f();
    this.undo.length = 0;
  }
}

export interface BlockGraphEdgeInfo {
  parent: number;
  child: number;
  name: string;
  perm: string[];
  'shared-perm': string[];
}

export interface BlockGraphInfo {
  nodes: Array<{ id: number; type: 'block-driver' | 'block-backend' | 'block-job'; name: string }>;
  edges: BlockGraphEdgeInfo[];
}

/** How the block layer reaches user-creatable objects (`throttle-group=ID`) without knowing who
 * keeps them: the daemon sets this; `use` returns the object's instance if `id` exists and has
 * that QOM type (and records `user` as holding it), else undefined. */
export interface ObjectLookup {
  use(id: string, qomType: string, user: string): unknown;
  release(id: string, user: string): void;
}

const NO_OBJECTS: ObjectLookup = { use: () => undefined, release: () => {} };

/** cache.* as a parent hands it to the children it opens (bdrv_inherited_options). */
interface InheritedCache {
  readonly direct: boolean;
  readonly noFlush: boolean;
}

export class BlockGraph {
  private readonly nodes = new Map<string, BlockNode>();
  private readonly roots = new Set<RootParent>();
  /** Every edge held by a root user (backend or job). */
  private readonly rootEdges = new Set<BdrvChild>();
  private readonly jobs = new Map<string, BackupJob>();
  private autoNames = 0;
  /** QMP events as ('qmp-event', name, data). */
  readonly events = new EventEmitter();
  private readonly drivers: Readonly<Record<string, DriverFactory>>;
  /** Breakpoints at named internal events, shared by every node of this graph. */
  readonly breakpoints = new Breakpoints();
  /** Nodes over one file are one disk: permissions across them, snapshot bypass (storage.ts). */
  private readonly storageChecker = new StorageChecker();
  /** User-creatable objects the drivers refer to by id (see ObjectLookup). */
  objects: ObjectLookup = NO_OBJECTS;

  /** `drivers` replaces the driver table: tests use it to run known-bad driver variants. */
  constructor(opts: { drivers?: Readonly<Record<string, DriverFactory>> } = {}) {
    this.drivers = opts.drivers ?? DRIVERS;
  }

  // ---- queries -------------------------------------------------------------------------------

  node(name: string): BlockNode | undefined {
    return this.nodes.get(name);
  }

  requireNode(name: string): BlockNode {
    const n = this.nodes.get(name);
    if (!n) throw new BlockError('ENOENT', `Cannot find node-name '${name}'`);
    return n;
  }

  allNodes(): BlockNode[] {
    return [...this.nodes.values()];
  }

  // ---- edges ---------------------------------------------------------------------------------

  /** Links `parent` to `child` as child `name` (parents list newest first, like QEMU). */
  link(tx: Transaction, parent: Parent, name: string, role: ChildRole, child: BlockNode): BdrvChild {
    const edge = new BdrvChild(parent, name, role, child);
    if (parent instanceof BlockNode) parent.children.push(edge);
    else this.rootEdges.add(edge);
    child.parents.unshift(edge);
    tx.onAbort(() => this.unlinkRaw(edge));
    return edge;
  }

  private unlinkRaw(edge: BdrvChild): void {
    const p = edge.parent;
    if (p instanceof BlockNode) p.children.splice(p.children.indexOf(edge), 1);
    else this.rootEdges.delete(edge);
    const i = edge.node.parents.indexOf(edge);
    if (i >= 0) edge.node.parents.splice(i, 1);
  }

  unlink(tx: Transaction, edge: BdrvChild): void {
    const p = edge.parent;
    const childIdx = p instanceof BlockNode ? p.children.indexOf(edge) : -1;
    const parentIdx = edge.node.parents.indexOf(edge);
    this.unlinkRaw(edge);
    tx.onAbort(() => {
      if (p instanceof BlockNode) p.children.splice(childIdx, 0, edge);
      else this.rootEdges.add(edge);
      edge.node.parents.splice(parentIdx, 0, edge);
    });
  }

  /** Points an existing edge at another node (bdrv_replace_child). */
  replaceChild(tx: Transaction, edge: BdrvChild, to: BlockNode): void {
    const from = edge.node;
    const idx = from.parents.indexOf(edge);
    from.parents.splice(idx, 1);
    to.parents.unshift(edge);
    edge.node = to;
    tx.onAbort(() => {
      to.parents.splice(to.parents.indexOf(edge), 1);
      from.parents.splice(idx, 0, edge);
      edge.node = from;
    });
  }

  // ---- permissions ---------------------------------------------------------------------------

  /** Nodes with every parent node before its children (bdrv_topological_dfs order). */
  private topologicalOrder(): BlockNode[] {
    const order: BlockNode[] = [];
    const state = new Map<BlockNode, 'visiting' | 'done'>();
    const visit = (n: BlockNode): void => {
      if (state.get(n) === 'done') return;
      if (state.get(n) === 'visiting') throw new BlockError('EINVAL', `loop in the block graph at node '${n.nodeName}'`);
      state.set(n, 'visiting');
      for (const c of n.children) visit(c.node);
      state.set(n, 'done');
      order.push(n);
    };
    for (const n of this.nodes.values()) visit(n);
    return order.reverse();
  }

  /** bdrv_refresh_perms over the whole graph; throws on the first conflict. */
  refreshPerms(check = true): void {
    const cumulative = new Map<BlockNode, { perm: number; shared: number }>();
    for (const node of this.topologicalOrder()) {
      let perm = 0;
      let shared = PERM_ALL;
      for (const p of node.parents) {
        perm |= p.perm;
        shared &= p.shared;
      }
      cumulative.set(node, { perm, shared });
      if (check && node.readOnly && perm & (PERM.WRITE | PERM.RESIZE)) {
        const who = node.parents.find((p) => p.perm & (PERM.WRITE | PERM.RESIZE))!;
        throw new BlockError('EPERM', `Block node '${node.nodeName}' is read-only, but ${who.parent.describe()} requires '${permNames(who.perm & (PERM.WRITE | PERM.RESIZE))}' (uses it as '${who.name}' child)`, { node: node.nodeName });
      }
      for (const c of node.children) {
        const np = node.childPerm(c, perm, shared);
        c.perm = np.perm;
        // bdrv_child_perm: a child opened with force-share=on is shared in full by its parents.
        c.shared = c.node.forceShare ? PERM_ALL : np.shared;
      }
    }
    if (check) {
      for (const node of this.nodes.values()) this.checkParents(node);
      // Nodes over one file as one node (storage.ts), before the image locks the drivers take.
      this.storageChecker.check([...this.nodes.values()]);
    }
    this.applyNodePerms(cumulative, check);
    if (check) this.storageChecker.commit([...this.nodes.values()]);
  }

  /** The drivers' own step (bdrv_node_refresh_perm's .bdrv_check_perm, then .bdrv_set_perm or
   * .bdrv_abort_perm): every node may refuse its new (perm, shared) before any commits. After a
   * rollback (check false) the restored permissions are committed as they are. */
  private applyNodePerms(cumulative: Map<BlockNode, { perm: number; shared: number }>, check: boolean): void {
    if (check) {
      const prepared: BlockNode[] = [];
      try {
        for (const [node, p] of cumulative) {
          node.checkPerm(p.perm, p.shared);
          prepared.push(node);
        }
      } catch (e) {
        for (const node of prepared) node.abortPerm();
        throw e;
      }
    }
    for (const [node, p] of cumulative) node.setPerm(p.perm, p.shared);
  }

  /** bdrv_parent_perms_conflict with bdrv_a_allow_b: a allows b iff (b.perm & a.shared) == b.perm. */
  private checkParents(node: BlockNode): void {
    for (const a of node.parents) {
      for (const b of node.parents) {
        if (a === b) continue;
        const denied = b.perm & ~a.shared;
        if (denied) {
          // QEMU >= 6.1 wording (docs/requirements/qemu-fleecing.md §1.4).
          throw new BlockError(
            'EPERM',
            `Permission conflict on node '${node.nodeName}': permissions '${permNames(denied)}' are both required by ${b.parent.describe()} (uses node '${node.nodeName}' as '${b.name}' child) and unshared by ${a.parent.describe()} (uses node '${node.nodeName}' as '${a.name}' child).`,
            { node: node.nodeName },
          );
        }
      }
    }
  }

  /** Runs a graph change; refreshes and checks permissions; rolls everything back on failure. */
  transaction<T>(change: (tx: Transaction) => T): T {
    const tx = new Transaction();
    try {
      const result = change(tx);
      this.refreshPerms();
      return result;
    } catch (e) {
      tx.rollback();
      this.refreshPerms(false);
      throw e;
    }
  }

  // ---- blockdev-add / blockdev-del -----------------------------------------------------------

  addNode(options: Readonly<Record<string, unknown>>): BlockNode {
    return this.transaction((tx) => this.createNode(tx, options, false));
  }

  /** Creates a node (and nested children) inside a transaction. `path` is where its options sit
   * in its parent's ('file.'), for error messages; `inherit`, the parent's cache options. */
  createNode(tx: Transaction, options: Readonly<Record<string, unknown>>, implicit: boolean, path = '', inherit?: InheritedCache): BlockNode {
    const driver = options['driver'];
    if (driver === undefined) throw new BlockError('EINVAL', `Parameter '${path}driver' is missing`);
    if (typeof driver !== 'string') throw new BlockError('EINVAL', `Invalid parameter type for '${path}driver', expected: string`);
    const factory = this.drivers[driver];
    if (!factory) {
      // QAPI's enum check on BlockdevDriver; a QEMU driver the reference lacks gets a hint.
      const hint = DRIVER_HINTS[driver];
      throw new BlockError('EINVAL', `Parameter '${path}driver' does not accept value '${driver}'${hint ? `: the reference does not implement it, ${hint}` : ''}`);
    }
    let nodeName = options['node-name'];
    if (nodeName === undefined) {
      if (!implicit) throw new BlockError('EINVAL', `'node-name' must be specified for the root node`);
      nodeName = this.autoName();
    }
    if (typeof nodeName !== 'string' || !/^[A-Za-z#][A-Za-z0-9_.#-]*$/.test(nodeName) || nodeName.length > 31) {
      throw new BlockError('EINVAL', `Invalid node-name: '${String(nodeName)}'`);
    }
    if (this.nodes.has(nodeName)) throw new BlockError('EEXIST', `Duplicate nodes with node-name='${nodeName}'`);
    const opts = new OptionReader(options, `node '${nodeName}' (driver ${driver})`, path, nodeName);
    const common = readCommonOptions(opts, inherit);
    const name = nodeName;
    const ctx: DriverContext = {
      nodeName: name,
      opts,
      common: { ...common, breakpoints: this.breakpoints },
      graph: this,
      addChild: (parent, key, role, required, childName, fallback) => {
        const ref = opts.raw(key) ?? fallback;
        if (ref === undefined) {
          if (required) throw new BlockError('EINVAL', `node '${name}' (driver ${driver}): parameter '${key}' is missing`);
          return undefined;
        }
        let child: BlockNode;
        if (typeof ref === 'string') {
          const found = this.nodes.get(ref);
          // bdrv_lookup_bs's words (a reference may name a device or a node).
          if (!found) throw new BlockError('ENOENT', `Cannot find device='${ref}' nor node-name='${ref}'`, { node: name });
          child = found;
        } else if (typeof ref === 'object' && ref !== null && !Array.isArray(ref)) {
          child = this.createNode(tx, ref as Record<string, unknown>, true, `${path}${key}.`, { direct: common.cacheDirect ?? false, noFlush: common.noFlush ?? false });
        } else {
          throw new BlockError('EINVAL', `node '${name}': parameter '${key}' expects a node-name or a blockdev object, got ${JSON.stringify(ref)}`);
        }
        this.link(tx, parent, childName ?? key, role, child);
        return child;
      },
    };
    const node = factory(ctx);
    opts.finish();
    this.nodes.set(name, node);
    (node as { implicit?: boolean }).implicit = implicit;
    tx.onAbort(() => {
      this.nodes.delete(name);
      void node.close();
    });
    return node;
  }

  private autoName(): string {
    let n: string;
    do n = `#block${String(++this.autoNames).padStart(3, '0')}`;
    while (this.nodes.has(n));
    return n;
  }

  /** blockdev-del: a node in use (it has parents) is refused; implicit children that lose their
   * last parent go with it. */
  async deleteNode(name: string): Promise<void> {
    const node = this.nodes.get(name);
    if (!node) throw new BlockError('ENOENT', `Failed to find node with node-name='${name}'`);
    if ((node as { implicit?: boolean }).implicit) {
      throw new BlockError('EINVAL', `Node ${name} is not owned by the monitor`);
    }
    if (node.parents.length > 0) throw new BlockError('EBUSY', `Node ${name} is in use`);
    const closed: BlockNode[] = [];
    this.transaction((tx) => this.removeNodeTx(tx, node, closed));
    for (const n of closed) await n.close();
  }

  /** Unlinks a parentless node and its orphaned implicit children; close them after commit. */
  removeNodeTx(tx: Transaction, node: BlockNode, closed: BlockNode[]): void {
    for (const c of [...node.children]) {
      this.unlink(tx, c);
      const child = c.node;
      if ((child as { implicit?: boolean }).implicit && child.parents.length === 0) this.removeNodeTx(tx, child, closed);
    }
    this.nodes.delete(node.nodeName);
    tx.onAbort(() => this.nodes.set(node.nodeName, node));
    closed.push(node);
  }

  // ---- root users ----------------------------------------------------------------------------

  /** blk_new + blk_insert_bs: a root user with fixed (perm, shared) on `nodeName`. */
  attachBackend(user: string, nodeName: string, perm: number, shared: number, name = ''): BackendImpl {
    const node = this.requireNode(nodeName);
    const backend = new BackendImpl(user, name, (b) => this.detachRoot(b));
    this.transaction((tx) => {
      const edge = this.link(tx, backend, 'root', 'filtered', node);
      edge.perm = perm;
      edge.shared = shared;
      backend.edge = edge;
      this.roots.add(backend);
      tx.onAbort(() => this.roots.delete(backend));
    });
    return backend;
  }

  /** A root edge for a job (named like QEMU's: "main node", "target"). */
  attachJobEdge(tx: Transaction, job: RootParent, name: string, node: BlockNode, perm: number, shared: number): BdrvChild {
    const edge = this.link(tx, job, name, 'filtered', node);
    edge.perm = perm;
    edge.shared = shared;
    this.roots.add(job);
    tx.onAbort(() => this.roots.delete(job));
    return edge;
  }

  detachRoot(root: RootParent): void {
    this.transaction((tx) => this.detachRootTx(tx, root));
  }

  detachRootTx(tx: Transaction, root: RootParent): void {
    for (const e of [...this.rootEdges]) if (e.parent === root) this.unlink(tx, e);
    this.roots.delete(root);
    tx.onAbort(() => this.roots.add(root));
  }

  /** block_resize's permission step: a temporary backend asking for RESIZE. The reference's
   * drivers cannot change size, so a request that passes the permission check is ENOTSUP. */
  resize(nodeName: string, size: number): void {
    const b = this.attachBackend('an unnamed block device', nodeName, PERM.RESIZE, PERM_ALL);
    b.detach();
    throw new BlockError('ENOTSUP', `Node '${nodeName}' cannot be resized to ${size} bytes: the reference drivers have fixed sizes`, { node: nodeName });
  }

  // ---- jobs ----------------------------------------------------------------------------------

  startBackup(opts: BackupOptions): BackupJob {
    const job = this.prepareBackup(opts);
    job.run();
    return job;
  }

  /** A backup job in state 'created' with its filter in place: a transaction's prepare step. */
  prepareBackup(opts: BackupOptions): BackupJob {
    // A running job's nodes (its filter and its target) carry op blockers until it concludes
    // (block_job_add_bdrv); QEMU checks them before the job ID.
    for (const name of [opts.device, opts.target]) {
      for (const j of this.jobs.values()) {
        if (j.status !== 'concluded' && j.status !== 'null' && (j.opts.target === name || j.filter?.nodeName === name)) {
          throw new BlockError('EBUSY', `Node '${name}' is busy: block device is in use by block job: backup`);
        }
      }
    }
    if (this.jobs.has(opts.jobId)) throw new BlockError('EEXIST', `Job ID '${opts.jobId}' already in use`);
    const job = new BackupJob(this, opts);
    this.jobs.set(opts.jobId, job);
    try {
      job.prepare();
    } catch (e) {
      this.jobs.delete(opts.jobId);
      throw e;
    }
    return job;
  }

  job(id: string): BackupJob | undefined {
    return this.jobs.get(id);
  }

  allJobs(): BackupJob[] {
    return [...this.jobs.values()];
  }

  /** Cancels a job; it is gone unless auto-dismiss is off (then it waits, concluded, for
   * job-dismiss). `quiet`: the abort of the transaction that created it. */
  async cancelJob(id: string, quiet = false): Promise<void> {
    const job = this.jobs.get(id);
    if (!job) throw new BlockError('ENOENT', `Block job '${id}' not found`);
    await job.cancel(quiet);
    if (job.status === 'null') this.jobs.delete(id);
  }

  dismissJob(id: string): void {
    const job = this.jobs.get(id);
    if (!job) throw new BlockError('ENOENT', 'Job not found');
    job.dismiss();
    this.jobs.delete(id);
  }

  queryJobs(): Array<Record<string, unknown>> {
    return [...this.jobs.values()].map((j) => j.info());
  }

  emit(name: string, data: Record<string, unknown>): void {
    this.events.emit('qmp-event', name, data);
  }

  // ---- introspection -------------------------------------------------------------------------

  /** x-debug-query-block-graph. */
  queryGraph(): BlockGraphInfo {
    const ids = new Map<object, number>();
    const info: BlockGraphInfo = { nodes: [], edges: [] };
    const idOf = (o: object, type: BlockGraphInfo['nodes'][number]['type'], name: string): number => {
      let id = ids.get(o);
      if (id === undefined) {
        id = ids.size + 1;
        ids.set(o, id);
        info.nodes.push({ id, type, name });
      }
      return id;
    };
    for (const r of this.roots) idOf(r, r.kind, r.name);
    for (const n of this.nodes.values()) idOf(n, 'block-driver', n.nodeName);
    const edges = [...this.rootEdges, ...[...this.nodes.values()].flatMap((n) => n.children)];
    for (const e of edges) {
      const parentId = ids.get(e.parent);
      const childId = ids.get(e.node);
      if (parentId === undefined || childId === undefined) continue;
      info.edges.push({
        parent: parentId,
        child: childId,
        name: e.name,
        perm: permListQapi(e.perm),
        'shared-perm': permListQapi(e.shared),
      });
    }
    return info;
  }

  /** query-named-block-nodes (the fields the suite uses). */
  queryNamedNodes(): Array<Record<string, unknown>> {
    return [...this.nodes.values()].map((n) => ({
      'node-name': n.nodeName,
      drv: n.driver,
      ro: n.readOnly,
      file: (n as { filename?: string }).filename ?? '',
      image: { 'virtual-size': n.length(), filename: (n as { filename?: string }).filename ?? '', format: n.driver },
      'dirty-bitmaps': [...n.dirtyBitmaps.entries()].map(([name, b]) => ({
        name, recording: b.enabled, persistent: false, busy: b.busy > 0, granularity: b.granularity, count: b.count() * b.granularity,
      })),
    }));
  }

  /** Edge lookup for tests and reports: parent description + child name -> edge. */
  edges(): BdrvChild[] {
    return [...this.rootEdges, ...[...this.nodes.values()].flatMap((n) => n.children)];
  }

  async close(): Promise<void> {
    this.breakpoints.clear();
    for (const [id, j] of [...this.jobs]) {
      if (j.status === 'concluded') this.jobs.delete(id);
      else await this.cancelJob(id);
    }
    for (const n of this.nodes.values()) await n.close();
  }
}

/**
 * BlockdevOptions' common members, read in QAPI's order (discard, cache, read-only,
 * auto-read-only, force-share, detect-zeroes) with its words, then checked as bdrv_open_common
 * and bdrv_open_inherit do. cache.direct and auto-read-only are accepted with no effect here (the
 * file driver has no O_DIRECT and opens read-write or fails); cache.no-flush skips the node's own
 * flush; detect-zeroes turns zero-filled writes into write-zeroes.
 */
function readCommonOptions(opts: OptionReader, inherit: InheritedCache | undefined): Omit<NodeCommonOptions, 'breakpoints'> {
  // BlockdevDiscardOptions is ignore|unmap in QAPI (bdrv_parse_discard_flags' on/off are for -drive).
  const discard = opts.enumeration('discard', ['ignore', 'unmap'] as const, 'ignore');
  const cache = opts.struct('cache');
  const cacheDirect = cache.bool('direct', inherit?.direct ?? false);
  const noFlush = cache.bool('no-flush', inherit?.noFlush ?? false);
  cache.finish();
  const readOnly = opts.bool('read-only', false);
  opts.bool('auto-read-only', false);
  const forceShare = opts.bool('force-share', false);
  const detectZeroes = opts.enumeration('detect-zeroes', ['off', 'on', 'unmap'] as const, 'off');
  if (forceShare && !readOnly) throw new BlockError('EINVAL', 'force-share=on can only be used with read-only images', opts.nodeName !== undefined ? { node: opts.nodeName } : {});
  if (detectZeroes === 'unmap' && discard !== 'unmap') {
    throw new BlockError('EINVAL', 'setting detect-zeroes to unmap is not allowed without setting discard operation to unmap', opts.nodeName !== undefined ? { node: opts.nodeName } : {});
  }
  return { readOnly, discardUnmap: discard === 'unmap', forceShare, detectZeroes, noFlush, cacheDirect };
}
