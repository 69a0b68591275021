// Storage identity in permission soundness: two nodes over one image file are aliases. QEMU
// 7.2's rules (with image locking) and the reference's (no storage identity) accept aliasing
// graphs whose snapshot reads return post-snapshot data; the storage-aware rule set refuses
// every one of them and still accepts safe aliasing (read-only aliases of a file no one writes).
import { describe, expect, it } from 'vitest';
import { evaluate, QEMU_7_2, REFERENCE, STORAGE_AWARE, type GraphOp, type ModelOptions, type NodeSpec } from '../models/permissions/graph.ts';
import { opsOf, shapeId, type GraphShape } from '../soundness/graphs.ts';
import { DEFAULT_SOUNDNESS, judge, soundness, type SoundnessOptions } from '../soundness/soundness.ts';
import { soundnessText, unsafeGroups, unsafeReason } from '../soundness/report.ts';

const add = (node: NodeSpec): GraphOp => ({ op: 'blockdev-add', node });
const exp = (id: string, nodeName: string, writable: boolean): GraphOp => ({ op: 'block-export-add', id, nodeName, writable });
const rules = (permissions: ModelOptions): SoundnessOptions => ({ ...DEFAULT_SOUNDNESS, permissions });
const asCase = (s: GraphShape) => ({ id: shapeId(s), shape: s, ops: opsOf(s) });

/** Legacy fleecing (blockdev-backup sync=none from the source) into an overlay whose backing is
 * a second, read-only file node over the source's image file, not the source node. */
function legacyAliasBacking(backing: 'alias' | 'source'): GraphOp[] {
  return [
    add({ name: 'source', driver: 'file', storage: 'disk.img' }),
    add({ name: 'alias', driver: 'file', storage: 'disk.img', readOnly: true }),
    add({ name: 'temp-file', driver: 'file', storage: 'fleece.qcow2' }),
    add({ name: 'temp', driver: 'qcow2', children: { file: 'temp-file', backing } }),
    exp('exp-live', 'source', true),
    { op: 'blockdev-backup', jobId: 'fleecing', device: 'source', target: 'temp', sync: 'none', filterNodeName: '#cbw' },
    exp('exp-fleece', 'temp', false),
  ];
}
const literal = (ops: GraphOp[]) => ({ id: 'literal', shape: { temp: 'qcow2-backed', cbw: 'none', access: false, raw: 'none', backup: true, exports: {} } as GraphShape, ops });

describe('aliasing graphs under QEMU 7.2 and the reference', () => {
  // Checked on qemu-storage-daemon 7.2.22 while writing this, over QMP, with a raw disk.img and a
  // qcow2 overlay: every command of legacyAliasBacking('alias') is accepted (the lock has nothing
  // to refuse: the alias takes consistent read and shares all); the race itself was not driven.
  it('legacy fleecing with the backing on a second node over the source file: accepted by 7.2, unsafe, with the race as trace', () => {
    for (const permissions of [QEMU_7_2, REFERENCE]) {
      const v = judge(literal(legacyAliasBacking('alias')), rules(permissions));
      expect(v.verdict, permissions.storage).toBe('accepted-unsafe');
      expect(v.readers[0]).toMatchObject({ exportId: 'exp-fleece', scheme: 'S3', readPath: 'alias-backing', readVia: 'alias', sourceStorage: 'disk.img' });
      expect(unsafeReason(v)).toMatch(/^aliasing: the temp's backing is another node over the source's file/);
      // The guest write through the source lands after the reader's lookup and before its
      // read of the backing: the backup job's copy did not wait for the read (not serialising).
      expect(v.violation).toBe('exp-fleece: snapshot read R0 of cluster 0 returned data written by W0, after the snapshot');
      expect(v.trace).toEqual(['1. W0.submit(cluster=0)', '2. R0.start(cluster=0)', '3. R0.lookup(cluster=0)', '4. W0.copyWrite()', '5. W0.write()', '6. R0.read(cluster=0, from=backing)']);
    }
    // The same graph with the source node itself as backing is the standard, safe one.
    expect(judge(literal(legacyAliasBacking('source')), rules(QEMU_7_2)).verdict).toBe('accepted-safe');
  });

  // Checked on qemu-storage-daemon 7.2.22 while writing this: blockdev-add of the read-only qcow2
  // over a second file node on the live qcow2's file fails with this very desc.
  it('with a qcow2 source, 7.2 refuses the read-only qcow2 alias by its image lock (QEMU wording); the reference accepts it', () => {
    const shape: GraphShape = { source: 'qcow2', temp: 'qcow2-backed', cbw: 'none', access: false, raw: 'none', backup: true, exports: { source: 'rw', temp: 'ro' }, alias: { of: 'source', use: 'backing', readOnly: true } };
    const q = evaluate(opsOf(shape), QEMU_7_2);
    expect(q.accepted).toBe(false);
    expect(q.refusal?.message).toBe('Failed to get shared "write" lock');
    expect(q.refusal?.kind).toBe('lock');
    expect(q.refusal?.context.node).toBe('alias-file');
    const refused = q.results.findIndex((r) => !r.ok);
    expect(opsOf(shape)[refused]).toMatchObject({ op: 'blockdev-add', node: { name: 'alias', driver: 'qcow2', readOnly: true } });
    expect(judge(asCase(shape), rules(REFERENCE)).verdict).toBe('accepted-unsafe');
  });

  it('a write through an alias is visible through the other node: a writable export on a second node over the source file, under snapshot-access', () => {
    const shape: GraphShape = { source: 'raw', temp: 'raw', cbw: 'source->temp', access: true, raw: 'none', backup: false, exports: { 'fl-access': 'ro', alias: 'rw' }, alias: { of: 'source', use: 'none', readOnly: false } };
    // QEMU 7.2's lock refuses it: cbw unshares write on the source's file ...
    expect(judge(asCase(shape), rules(QEMU_7_2)).refusal).toBe('Failed to get "write" lock');
    // ... the reference, without storage identity, lets it in, and the snapshot reads it.
    const v = judge(asCase(shape), rules(REFERENCE));
    expect(v.verdict).toBe('accepted-unsafe');
    expect(v.readers[0]?.aliasSourceWriters).toEqual([{ edge: 'export exp-alias -> alias (root)', via: 'alias', storage: 'source.img', alias: true }]);
    expect(v.trace).toEqual(['1. R0.start(cluster=0)', '2. R0.lock(cluster=0)', '3. Y.write-source-bypassing-cbw(via=alias, file=source.img, cluster=0)', '4. R0.read(cluster=0, from=source)']);
    expect(unsafeReason(v)).toBe("aliasing: a write through another node over the source's file, bypassing copy-before-write");
  });

  it('reading the fleecing image through a second node over its file: reads untracked where the copies serialise (reference)', () => {
    const shape: GraphShape = { source: 'raw', temp: 'qcow2-backed', cbw: 'source->temp', access: false, raw: 'none', backup: false, exports: { 'fl-cbw': 'rw', alias: 'ro' }, alias: { of: 'temp', use: 'none', readOnly: true } };
    const v = judge(asCase(shape), rules(REFERENCE));
    expect(v.verdict).toBe('accepted-unsafe');
    expect(v.readers[0]).toMatchObject({ exportId: 'exp-alias', readPath: 'alias-target', readVia: 'alias', target: 'temp' });
    expect(v.trace?.at(-1)).toBe('7. R0.read(cluster=0, from=backing)');
  });

  it('the report groups the aliasing graphs under their own causes, each with an example and its trace, for QEMU 7.2 and the reference', () => {
    const bound = { maxExports: 2, temps: ['qcow2-backed'] as const };
    for (const permissions of [QEMU_7_2, REFERENCE]) {
      const r = soundness({ ...bound, temps: [...bound.temps] }, rules(permissions));
      const aliasing = [...unsafeGroups(r).keys()].filter((k) => k.startsWith('aliasing'));
      expect(aliasing.length, permissions.storage).toBeGreaterThan(0);
      const text = soundnessText(r);
      for (const why of aliasing) {
        const at = text.indexOf(`accepted but unsafe because of ${why}:`);
        expect(at, why).toBeGreaterThan(0);
        // example graph, violation sentence, then a numbered trace
        expect(text.slice(at).split('\n').slice(1, 4).join('\n')).toMatch(/^ {2}e\.g\. .* alias=.*\n {7}exp-.*\n {7}1\. /);
      }
    }
  });
});

describe('the storage-aware rule set (what the reference is to do)', () => {
  it('refuses the legacy alias-backing graph, naming nodes, file and path', () => {
    const ev = evaluate(legacyAliasBacking('alias'), STORAGE_AWARE);
    expect(ev.accepted).toBe(false);
    const i = ev.results.findIndex((r) => !r.ok);
    expect(legacyAliasBacking('alias')[i]?.op).toBe('block-export-add'); // the reader's export
    expect(ev.refusal?.kind).toBe('storage');
    expect(ev.refusal?.message).toBe(
      "Unprotected snapshot: export 'exp-fleece' reads the snapshot of 'source' (file 'disk.img') through 'temp' -> backing 'alias', another node over that file: the copies of '#cbw' are not serialised against those reads, so a write through 'source' can reach the reader first",
    );
    expect(evaluate(legacyAliasBacking('source'), STORAGE_AWARE).accepted).toBe(true);
  });

  it('checks permissions across the nodes of one file as one node, with a message naming them and the file', () => {
    const shape: GraphShape = { source: 'raw', temp: 'raw', cbw: 'source->temp', access: true, raw: 'none', backup: false, exports: { 'fl-access': 'ro', alias: 'rw' }, alias: { of: 'source', use: 'none', readOnly: false } };
    expect(judge(asCase(shape), rules(STORAGE_AWARE)).refusal).toBe(
      "Permission conflict on file 'source.img' (opened by nodes 'source' and 'alias'): permissions 'write' are required by export 'exp-alias' (through node 'alias') and unshared by node 'fl-cbw' (through node 'source')",
    );
  });

  it('accepts read-only aliases of a file no one writes, and they are safe', () => {
    // two read-only file nodes over one image, each exported read-only
    const plain = [add({ name: 'a', driver: 'file', storage: 'base.img', readOnly: true }), add({ name: 'b', driver: 'file', storage: 'base.img', readOnly: true }), exp('ea', 'a', false), exp('eb', 'b', false)];
    for (const o of [QEMU_7_2, REFERENCE, STORAGE_AWARE]) expect(evaluate(plain, o).accepted, o.storage).toBe(true);
    // a snapshot of a raw source no one writes, beside a read-only alias of its file exported read-only
    const shape: GraphShape = { source: 'raw', temp: 'raw', cbw: 'source->temp', access: true, raw: 'none', backup: false, exports: { 'fl-access': 'ro', alias: 'ro' }, alias: { of: 'source', use: 'none', readOnly: true } };
    for (const o of [QEMU_7_2, REFERENCE, STORAGE_AWARE]) expect(judge(asCase(shape), rules(o)).verdict, o.storage).toBe('accepted-safe');
  });

  it('over the enumeration: accepts no unsafe graph, aliasing or not, and refuses a graph the reference judges safe only for a permission conflict across one file', () => {
    const bound = { maxExports: 2 };
    const sa = soundness(bound, rules(STORAGE_AWARE));
    expect(sa.counts['accepted-unsafe']).toBe(0);
    const safeAliasing = sa.verdicts.filter((v) => v.verdict === 'accepted-safe' && v.id.includes(' alias='));
    expect(safeAliasing.length).toBeGreaterThan(0);
    const ref = soundness(bound, rules(REFERENCE));
    expect(ref.verdicts.map((v) => v.id)).toEqual(sa.verdicts.map((v) => v.id));
    const odd = ref.verdicts.flatMap((v, i) => {
      const s = sa.verdicts[i]!;
      return v.verdict === 'accepted-safe' && s.verdict === 'refused' && !s.refusal!.startsWith('Permission conflict on file') ? [`${v.id}: ${s.refusal}`] : [];
    });
    expect(odd).toEqual([]);
    // and it accepts as safe exactly the graphs QEMU 7.2 accepts and the data plane shows safe
    const q = soundness(bound, rules(QEMU_7_2));
    const safe = (r: typeof sa) => r.verdicts.filter((v) => v.verdict === 'accepted-safe').map((v) => v.id);
    expect(safe(sa)).toEqual(safe(q));
  });

  it('known-bad variant: the merged permission check alone (no reader check) lets the alias-backing race in', () => {
    const mergedOnly: ModelOptions = { cbwRule: '9.1', storage: 'locking' };
    const v = judge(literal(legacyAliasBacking('alias')), rules(mergedOnly));
    expect(v.verdict).toBe('accepted-unsafe');
    expect(v.readers[0]?.readPath).toBe('alias-backing');
  });
});
