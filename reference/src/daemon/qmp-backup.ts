// The QMP commands of backup flows, with QEMU 7.2's schema (qapi/block-core.json,
// qapi/transaction.json, qapi/job.json) and its refusals in its words: blockdev-backup, the
// block-dirty-bitmap-* commands, `transaction` over them (all or nothing: every action is
// prepared in order, and a failure aborts those already prepared, qmp_transaction), query-jobs,
// job-* and block-job-* (docs/requirements/backup.md §1).
import type { BackupJob } from '../block/backup.ts';
import type { ClusterBitmap } from '../block/bitmap.ts';
import type { DirtyBitmap } from '../block/dirty-bitmap.ts';
import type { BlockGraph } from '../block/graph.ts';
import type { BlockNode } from '../block/node.ts';
import { QmpArgs, QmpError, type QmpDispatcher } from '../qmp/dispatcher.ts';

/** One transaction action: `prepare` may fail; `abort` undoes a prepared action, `commit` makes
 * it final (QEMU's BlkActionOps). A plain command is prepare + commit. */
interface Action {
  prepare(): void | Promise<void>;
  commit(): void;
  abort(): void | Promise<void>;
}

type ActionParser = (a: QmpArgs, graph: BlockGraph) => Action;

/** BDRV_BITMAP_MAX_NAME_SIZE */
const MAX_BITMAP_NAME = 1023;

function findNode(graph: BlockGraph, name: string): BlockNode {
  const n = graph.node(name);
  if (!n) throw new QmpError('GenericError', `Cannot find device='${name}' nor node-name='${name}'`);
  return n;
}

function findBitmap(graph: BlockGraph, node: string, name: string): DirtyBitmap {
  const bm = findNode(graph, node).dirtyBitmaps.get(name);
  if (!bm) throw new QmpError('GenericError', `Dirty bitmap '${name}' not found`);
  return bm;
}

/** qemu-storage-daemon has no BlockBackend names, so an omitted job-id is the empty device name
 * (job_create: "Invalid job ID ''"); a given one must be well formed (id_wellformed). */
function jobId(id: string | undefined): string {
  if (id === undefined || !/^[A-Za-z][A-Za-z0-9_.-]*$/.test(id)) throw new QmpError('GenericError', `Invalid job ID '${id ?? ''}'`);
  return id;
}

const noop = (): void => {};

const ACTIONS: Readonly<Record<string, ActionParser>> = {
  'block-dirty-bitmap-add': (a, graph) => {
    const node = a.str('node');
    const name = a.str('name');
    const granularity = a.optInt('granularity') ?? 65536;
    const persistent = a.optBool('persistent') ?? false;
    const disabled = a.optBool('disabled') ?? false;
    a.finish();
    let added: DirtyBitmap | undefined;
    return {
      prepare() {
        if (name === '') throw new QmpError('GenericError', 'Bitmap name cannot be empty');
        if (name.length > MAX_BITMAP_NAME) throw new QmpError('GenericError', `Bitmap name is too long`);
        const n = findNode(graph, node);
        if (granularity < 512 || (granularity & (granularity - 1)) !== 0) {
          throw new QmpError('GenericError', 'Granularity must be power of 2 and at least 512');
        }
        // No reference driver can store a bitmap in its image (QEMU: only qcow2 can).
        if (persistent) throw new QmpError('GenericError', `Can't store persistent bitmaps to ${node}: Operation not supported`);
        added = n.addDirtyBitmap(name, granularity);
        added.enabled = !disabled;
      },
      commit: noop,
      abort() {
        if (added) findNode(graph, node).dirtyBitmaps.delete(name);
      },
    };
  },
  'block-dirty-bitmap-remove': (a, graph) => {
    const node = a.str('node');
    const name = a.str('name');
    a.finish();
    let bm: DirtyBitmap | undefined;
    return {
      // Held busy until commit, so a second remove of it in the same transaction is refused.
      prepare() {
        const b = findBitmap(graph, node, name);
        b.check();
        b.busy++;
        bm = b;
      },
      commit() {
        if (!bm) return;
        bm.busy--;
        findNode(graph, node).dirtyBitmaps.delete(name);
      },
      abort() {
        if (bm) bm.busy--;
      },
    };
  },
  'block-dirty-bitmap-clear': (a, graph) => {
    const node = a.str('node');
    const name = a.str('name');
    a.finish();
    let bm: DirtyBitmap | undefined;
    let before: ClusterBitmap | undefined;
    return {
      prepare() {
        const b = findBitmap(graph, node, name);
        b.check();
        before = b.snapshot();
        b.setClusters(0, b.clusters, false);
        bm = b;
      },
      commit: noop,
      abort() {
        if (bm && before) bm.restore(before);
      },
    };
  },
  'block-dirty-bitmap-enable': (a, graph) => enableAction(a, graph, true),
  'block-dirty-bitmap-disable': (a, graph) => enableAction(a, graph, false),
  'block-dirty-bitmap-merge': (a, graph) => {
    const node = a.str('node');
    const target = a.str('target');
    const list = a.optList('bitmaps');
    if (list === undefined) throw new QmpError('GenericError', "Parameter 'bitmaps' is missing");
    const sources = list.map((b, i) => {
      if (typeof b === 'string') return { node, name: b };
      const o = b as { node?: unknown; name?: unknown };
      if (typeof b === 'object' && b !== null && typeof o.node === 'string' && typeof o.name === 'string') return { node: o.node, name: o.name };
      throw new QmpError('GenericError', `Invalid parameter type for 'bitmaps[${i}]', expected: BlockDirtyBitmapOrStr`);
    });
    a.finish();
    let dst: DirtyBitmap | undefined;
    let before: ClusterBitmap | undefined;
    return {
      // All sources are checked before anything changes (block_dirty_bitmap_merge works on an
      // anonymous copy), so a failed merge leaves the target as it was.
      prepare() {
        const d = findBitmap(graph, node, target);
        d.check();
        const srcs = sources.map((s) => findBitmap(graph, s.node, s.name));
        for (const s of srcs) {
          s.check();
          if (s.length !== d.length) throw new QmpError('GenericError', "Bitmaps are incompatible and can't be merged");
        }
        before = d.snapshot();
        for (const s of srcs) d.orWith(s);
        dst = d;
      },
      commit: noop,
      abort() {
        if (dst && before) dst.restore(before);
      },
    };
  },
  'blockdev-backup': (a, graph) => {
    const job = backupOptions(a);
    let started: BackupJob | undefined;
    return {
      prepare() {
        started = graph.prepareBackup(job);
      },
      commit() {
        started?.run();
      },
      async abort() {
        if (started) await graph.cancelJob(started.opts.jobId, true);
      },
    };
  },
  abort: (a) => {
    a.finish();
    return {
      prepare() {
        throw new QmpError('GenericError', 'Transaction aborted using Abort action');
      },
      commit: noop,
      abort: noop,
    };
  },
};

/** Actions that may run with completion-mode=grouped (only job-creating ones, qmp_transaction). */
const GROUPED_OK = new Set(['blockdev-backup']);
/** TransactionAction types of 7.2 the reference does not implement. */
const UNSUPPORTED = new Set(['blockdev-snapshot', 'blockdev-snapshot-sync', 'blockdev-snapshot-internal-sync', 'drive-backup']);

function enableAction(a: QmpArgs, graph: BlockGraph, enable: boolean): Action {
  const node = a.str('node');
  const name = a.str('name');
  a.finish();
  let bm: DirtyBitmap | undefined;
  let was = false;
  return {
    prepare() {
      const b = findBitmap(graph, node, name);
      b.check();
      was = b.enabled;
      b.enabled = enable;
      bm = b;
    },
    commit: noop,
    abort() {
      if (bm) bm.enabled = was;
    },
  };
}

function backupOptions(a: QmpArgs): Parameters<BlockGraph['prepareBackup']>[0] {
  const id = a.optStr('job-id');
  const device = a.str('device');
  const target = a.str('target');
  const sync = a.str('sync');
  const filterNodeName = a.optStr('filter-node-name');
  const autoFinalize = a.optBool('auto-finalize');
  const autoDismiss = a.optBool('auto-dismiss');
  const unsafe = a.optBool('x-unserialized-target-writes');
  const dropDirty = a.optBool('x-drop-dirty-writes');
  const noProgress = a.optBool('x-no-job-progress');
  // Accepted with no effect: the reference job copies nothing of its own (sync=none).
  a.accept('speed', 'on-source-error', 'on-target-error', 'compress', 'bitmap', 'bitmap-mode', 'x-perf');
  a.finish();
  const validId = jobId(id);
  if (!['full', 'top', 'none', 'incremental', 'bitmap'].includes(sync)) throw new QmpError('GenericError', `Parameter 'sync' does not accept value '${sync}'`);
  if (sync !== 'none') throw new QmpError('GenericError', `backup sync='${sync}' is not supported by the reference (only 'none')`);
  return {
    jobId: validId,
    device,
    target,
    sync: 'none',
    ...(filterNodeName !== undefined ? { filterNodeName } : {}),
    ...(autoFinalize !== undefined ? { autoFinalize } : {}),
    ...(autoDismiss !== undefined ? { autoDismiss } : {}),
    ...(unsafe !== undefined ? { xUnserializedTargetWrites: unsafe } : {}),
    ...(dropDirty !== undefined ? { xDropDirtyWrites: dropDirty } : {}),
    ...(noProgress !== undefined ? { xNoJobProgress: noProgress } : {}),
  };
}

/** Runs one parsed action as a command of its own. */
async function runAlone(action: Action): Promise<Record<string, never>> {
  await action.prepare();
  action.commit();
  return {};
}

/** Error texts of nested arguments name their path, as QAPI's visitor does ('actions[0].data.name'). */
function nested<T>(path: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof QmpError) throw new QmpError(e.errorClass, e.message.replace(/(Parameter|parameter type for) '([^']+)'/, (_m, w: string, k: string) => `${w} '${path}.${k}'`));
    throw e;
  }
}

async function transaction(a: QmpArgs, graph: BlockGraph): Promise<Record<string, never>> {
  const list = a.optList('actions');
  if (list === undefined) throw new QmpError('GenericError', "Parameter 'actions' is missing");
  const props = a.optObj('properties');
  a.finish();
  let grouped = false;
  let noRollback = false;
  if (props) {
    const p = new QmpArgs(props);
    const mode = nested('properties', () => p.optStr('completion-mode')) ?? 'individual';
    // UNSAFE, known bad (the backup suite's rollback check): a failed transaction keeps the
    // actions prepared before the failing one.
    noRollback = nested('properties', () => p.optBool('x-no-rollback')) ?? false;
    p.finish();
    if (mode !== 'individual' && mode !== 'grouped') throw new QmpError('GenericError', `Parameter 'completion-mode' does not accept value '${mode}'`);
    grouped = mode === 'grouped';
  }
  // The whole request is parsed before any action runs (the QAPI visitor), so a malformed
  // action anywhere changes nothing.
  const actions = list.map((raw, i) => {
    const where = `actions[${i}]`;
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new QmpError('GenericError', `Invalid parameter type for '${where}', expected: object`);
    const r = new QmpArgs(raw as Record<string, unknown>);
    const type = nested(where, () => r.str('type'));
    const data = nested(where, () => r.obj('data'));
    nested(where, () => r.finish());
    if (UNSUPPORTED.has(type)) throw new QmpError('GenericError', `transaction action '${type}' is not supported by the reference`);
    const parse = ACTIONS[type];
    if (!parse) throw new QmpError('GenericError', `Parameter 'type' does not accept value '${type}'`);
    if (grouped && !GROUPED_OK.has(type)) throw new QmpError('GenericError', `Action '${type}' does not support Transaction property completion-mode = grouped`);
    return nested(`${where}.data`, () => parse(new QmpArgs(data), graph));
  });
  const prepared: Action[] = [];
  try {
    for (const act of actions) {
      await act.prepare();
      prepared.push(act);
    }
  } catch (e) {
    if (noRollback) {
      for (const act of prepared) act.commit();
      throw e;
    }
    // The failed action undoes its own partial work too (its abort checks what it did).
    const failed = actions[prepared.length];
    if (failed) prepared.push(failed);
    for (const act of prepared.reverse()) await act.abort();
    throw e;
  }
  for (const act of actions) act.commit();
  return {};
}

function requireJob(graph: BlockGraph, id: string, block: boolean): BackupJob {
  const j = graph.job(id);
  if (!j) throw block ? new QmpError('DeviceNotActive', `Block job '${id}' not found`) : new QmpError('GenericError', 'Job not found');
  return j;
}

export function registerBackupCommands(d: QmpDispatcher, graph: BlockGraph): void {
  for (const [name, parse] of Object.entries(ACTIONS)) {
    if (name === 'abort') continue;
    d.register(name, (a) => runAlone(parse(a, graph)));
  }
  d.register('transaction', (a) => transaction(a, graph));
  d.register('query-jobs', (a) => {
    a.finish();
    return graph.allJobs().map((j) => j.jobInfo());
  });
  d.register('query-block-jobs', (a) => {
    a.finish();
    return graph.queryJobs();
  });

  // job-* take `id`; block-job-* take `device` (dismiss and finalize: `id`) and say
  // DeviceNotActive for an unknown job, as QEMU does.
  for (const block of [false, true]) {
    const pre = block ? 'block-job-' : 'job-';
    const idKey = block ? 'device' : 'id';
    const job = (a: QmpArgs, key = idKey) => {
      const id = a.str(key);
      return () => requireJob(graph, id, block);
    };
    d.register(`${pre}cancel`, async (a) => {
      const get = job(a);
      const force = block ? a.optBool('force') : undefined;
      a.finish();
      const j = get();
      if (block && !force && j.status === 'paused') throw new QmpError('GenericError', `The block job for device '${j.opts.jobId}' is currently paused`);
      j.checkVerb('cancel');
      await graph.cancelJob(j.opts.jobId);
      return {};
    });
    d.register(`${pre}pause`, (a) => {
      const get = job(a);
      a.finish();
      get().pause();
      return {};
    });
    d.register(`${pre}resume`, (a) => {
      const get = job(a);
      a.finish();
      get().resume();
      return {};
    });
    d.register(`${pre}complete`, (a) => {
      const get = job(a);
      a.finish();
      // A backup never becomes ready, so 'complete' is always refused by the verb table.
      get().checkVerb('complete');
      return {};
    });
    d.register(`${pre}finalize`, (a) => {
      const get = job(a, 'id');
      a.finish();
      get().checkVerb('finalize');
      return {};
    });
    d.register(`${pre}dismiss`, (a) => {
      const get = job(a, 'id');
      a.finish();
      graph.dismissJob(get().opts.jobId);
      return {};
    });
  }
}
