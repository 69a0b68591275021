// The fleecing graphs of docs/requirements/qemu-fleecing.md §5 as command sequences, in the order the verified
// qemu-storage-daemon command lines build them, plus the measured conflicts of §1.4 and the
// accepted-but-unsafe graphs of §6 B6.
import type { GraphOp, NodeSpec } from './graph.ts';

const add = (node: NodeSpec): GraphOp => ({ op: 'blockdev-add', node });
const exportAdd = (id: string, nodeName: string, writable: boolean): GraphOp => ({
  op: 'block-export-add',
  id,
  nodeName,
  writable,
});

/** Implicit protocol nodes (`file.driver=file`) get these names here; QEMU names them '#blockNNN'. */
export const SOURCE_FILE = 'source-file';
export const TEMP_FILE = 'temp-file';

/** §5.1: qcow2 source, raw temp, fl-cbw (file=source, target=temp), fl-access over fl-cbw,
 * export `live` writable on fl-cbw, export `fleece` read-only on fl-access. */
export function modernFleecing(): GraphOp[] {
  return [
    add({ name: SOURCE_FILE, driver: 'file' }),
    add({ name: 'source', driver: 'qcow2', children: { file: SOURCE_FILE } }),
    add({ name: 'temp', driver: 'file' }),
    add({ name: 'fl-cbw', driver: 'copy-before-write', children: { file: 'source', target: 'temp' } }),
    add({ name: 'fl-access', driver: 'snapshot-access', children: { file: 'fl-cbw' } }),
    exportAdd('exp-live', 'fl-cbw', true),
    exportAdd('exp-fleece', 'fl-access', false),
  ];
}

/** §5.2: qcow2 source and qcow2 temp backed by source, export `live` writable on source, then
 * blockdev-backup sync=none source -> temp, then export `fleece` read-only on temp. */
export function legacyFleecing(filterNodeName?: string): GraphOp[] {
  return [
    add({ name: SOURCE_FILE, driver: 'file' }),
    add({ name: 'source', driver: 'qcow2', children: { file: SOURCE_FILE } }),
    add({ name: TEMP_FILE, driver: 'file' }),
    add({ name: 'temp', driver: 'qcow2', children: { file: TEMP_FILE, backing: 'source' } }),
    exportAdd('exp-live', 'source', true),
    { op: 'blockdev-backup', jobId: 'fleecing', device: 'source', target: 'temp', sync: 'none', filterNodeName },
    exportAdd('exp-fleece', 'temp', false),
  ];
}

/** §1.4 measured refusal: a writable export on `source` under fl-cbw. */
export const WRITABLE_EXPORT_ON_SOURCE: GraphOp = exportAdd('exp-bad', 'source', true);
/** §1.4 measured refusal: block_resize of fl-cbw while NBD exports hold it. */
export const RESIZE_CBW: GraphOp = { op: 'block_resize', nodeName: 'fl-cbw' };
/** §1.4 / §6 B6 accepted but unsafe: a writable export on the temp (target) node. */
export const WRITABLE_EXPORT_ON_TEMP: GraphOp = exportAdd('exp-temp', 'temp', true);
/** §1.4 accepted (and harmless): a read-only export on `source` under fl-cbw. */
export const READONLY_EXPORT_ON_SOURCE: GraphOp = exportAdd('exp-ro-source', 'source', false);
/** §1.4: blockdev-del of a node in use. */
export const DELETE_CBW: GraphOp = { op: 'blockdev-del', nodeName: 'fl-cbw' };

/** The measured messages, verbatim from docs/requirements/qemu-fleecing.md §1.4 (the resize one is abridged
 * there; its full form follows the same format). */
export const MEASURED = {
  writableExportOnSource:
    "Permission conflict on node 'source': permissions 'write' are both required by an unnamed block device " +
    "(uses node 'source' as 'root' child) and unshared by node 'fl-cbw' (uses node 'source' as 'file' child).",
  resizeCbwPrefix:
    "Permission conflict on node 'fl-cbw': permissions 'resize' are both required by an unnamed block device ",
  resizeCbwInfix: ' and unshared by an unnamed block device ',
  deleteInUse: 'Node fl-cbw is in use',
} as const;
