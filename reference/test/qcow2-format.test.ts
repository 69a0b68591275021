// The qcow2 codec (reference/src/block/drivers/qcow2-format.ts) on its own: headers as qemu-img
// 7.2 writes them, entries, refcounts of every width.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  decodeHeader, decodeL1, decodeL2, encodeL1, encodeL2, EXT, featureNames, geometry, getRefcount, isQcow2,
  Qcow2FormatError, refcountEntrySpan, reservedBits, setRefcount,
} from '../src/block/drivers/qcow2-format.ts';
import { tmpDir } from './nbd-helpers.ts';
import { createQcow2 } from './qcow2-support.ts';

const t = tmpDir('qcow2-format-');
afterAll(() => t.cleanup());
const head = (f: string) => fs.readFileSync(f).subarray(0, 65536);

describe('qcow2 header', () => {
  it('v3 from qemu-img: fields, the feature table extension, the backing file and its format', async () => {
    const base = path.join(t.dir, 'base.qcow2');
    const top = path.join(t.dir, 'top.qcow2');
    await createQcow2(base, '64M');
    await createQcow2(top, '64M', { backing_file: 'base.qcow2', backing_fmt: 'qcow2' });
    const h = decodeHeader(head(top));
    expect(h).toMatchObject({
      version: 3, clusterBits: 16, size: 64 * 1024 * 1024, cryptMethod: 0, l1Size: 1, refcountOrder: 4,
      headerLength: 112, incompatible: 0n, nbSnapshots: 0, backingFile: 'base.qcow2', backingFormat: 'qcow2',
    });
    expect(h.extensions.map((e) => e.type)).toEqual([EXT.BACKING_FORMAT, EXT.FEATURE_TABLE]);
    expect(geometry(h)).toEqual({ clusterSize: 65536, l2Entries: 8192, refcountBlockEntries: 32768, l1Needed: 1 });
  });

  it('v2 from qemu-img (compat=0.10): no v3 fields, refcount order 4', async () => {
    const f = path.join(t.dir, 'v2.qcow2');
    await createQcow2(f, '1G', { compat: '0.10', cluster_size: 4096 });
    expect(decodeHeader(head(f))).toMatchObject({ version: 2, clusterBits: 12, refcountOrder: 4, headerLength: 72, extensions: [] });
  });

  it.each([
    ['not qcow2', Buffer.alloc(512), /Image is not in qcow2 format/],
    ['version 1', Buffer.from('514649fb00000001', 'hex'), /Unsupported qcow2 version 1/],
  ])('refuses %s', (_w, buf, re) => {
    const b = Buffer.alloc(512);
    buf.copy(b);
    expect(() => decodeHeader(b)).toThrow(Qcow2FormatError);
    expect(() => decodeHeader(b)).toThrow(re);
    expect(isQcow2(b)).toBe(b.readUInt32BE(0) === 0x514649fb);
  });

  it('names feature bits, unknown ones by number', () => {
    expect(featureNames((1n << 2n) | (1n << 4n) | (1n << 9n))).toEqual(['external data file', 'extended L2 entries', 'unknown bit 9']);
  });
});

describe('qcow2 entries and refcounts', () => {
  it('L1 and L2 entries round-trip; v2 ignores the zero flag; reserved bits are found', () => {
    expect(decodeL1(encodeL1(0x50000))).toEqual({ l2Offset: 0x50000, copied: true });
    expect(encodeL1(0)).toBe(0n);
    for (const e of [{ kind: 'normal', offset: 0x30000 }, { kind: 'zero-alloc', offset: 0x40000 }, { kind: 'zero-plain' }, { kind: 'unallocated' }] as const) {
      expect(decodeL2(encodeL2(e), 3)).toMatchObject({ kind: e.kind, offset: 'offset' in e ? e.offset : 0 });
    }
    expect(decodeL2(1n, 2).kind).toBe('unallocated');
    expect(decodeL2(1n << 62n, 3).kind).toBe('compressed');
    expect(reservedBits(0x30000n | (1n << 63n), 'l2')).toBe(0n);
    expect(reservedBits(0x30002n, 'l2')).toBe(2n);
    expect(reservedBits(0x30001n, 'l1')).toBe(1n);
  });

  it.each([0, 1, 2, 3, 4, 5, 6])('refcount order %i: set/get every entry of a block independently', (order) => {
    const block = Buffer.alloc(512);
    const entries = (512 * 8) / (1 << order);
    const max = order >= 5 ? 2 ** 31 : 2 ** (1 << order) - 1;
    for (let i = 0; i < entries; i++) setRefcount(block, i, order, (i * 7) % (max + 1));
    for (let i = 0; i < entries; i++) expect(getRefcount(block, i, order)).toBe((i * 7) % (max + 1));
    const span = refcountEntrySpan(entries - 1, order);
    expect(span.end).toBe(512);
    if (order < 6) expect(() => setRefcount(block, 0, order, 2 ** (1 << order))).toThrow(/does not fit/);
  });
});
