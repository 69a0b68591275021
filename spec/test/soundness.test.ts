// Permission soundness: the permission model (QEMU 7.2) accepts some graphs whose snapshot reads
// can return non-snapshot data (docs/requirements/qemu-fleecing.md §6 B6); the standard modern and legacy graphs are
// accepted and safe. Each check is also run against a known-bad variant that it must catch.
import { describe, expect, it } from 'vitest';
import { KNOWN_BAD, S3, S4 } from '../models/fleecing/index.ts';
import { legacyFleecing, modernFleecing, WRITABLE_EXPORT_ON_TEMP } from '../models/permissions/scenarios.ts';
import { enumerateGraphs, opsOf, shapeId, type GraphShape } from '../soundness/graphs.ts';
import { DEFAULT_SOUNDNESS, judge, soundness, type SoundnessOptions } from '../soundness/soundness.ts';
import { soundnessText } from '../soundness/report.ts';

const MODERN: GraphShape = { temp: 'raw', cbw: 'source->temp', access: true, raw: 'none', backup: false, exports: { 'fl-cbw': 'rw', 'fl-access': 'ro' } };
const LEGACY: GraphShape = { temp: 'qcow2-backed', cbw: 'none', access: false, raw: 'none', backup: true, exports: { source: 'rw', temp: 'ro' } };
const B6: GraphShape = { ...MODERN, exports: { temp: 'rw', 'fl-cbw': 'rw', 'fl-access': 'ro' } };
/** A writable export straight on `source` under fl-cbw: refused on 7.2 (docs/requirements/qemu-fleecing.md §1.4). */
const BYPASS: GraphShape = { ...MODERN, exports: { source: 'rw', 'fl-cbw': 'rw', 'fl-access': 'ro' } };

const asCase = (s: GraphShape) => ({ id: shapeId(s), shape: s, ops: opsOf(s) });

describe('permission soundness', () => {
  it('the standard modern and legacy graphs are accepted and safe (shapes and the §5 command sequences)', () => {
    expect(judge(asCase(MODERN)).verdict).toBe('accepted-safe');
    expect(judge(asCase(LEGACY)).verdict).toBe('accepted-safe');
    const literal = (ops: ReturnType<typeof modernFleecing>) => judge({ id: 'literal', shape: MODERN, ops });
    expect(literal(modernFleecing()).verdict).toBe('accepted-safe');
    expect(literal(legacyFleecing('#cbw')).verdict).toBe('accepted-safe');
  });

  it('B6: a writable export on temp is accepted but unsafe, with a counterexample', () => {
    const v = judge(asCase(B6));
    expect(v.verdict).toBe('accepted-unsafe');
    expect(v.readers[0]?.tempWriters).toEqual(['export exp-temp -> temp (root)']);
    expect(v.violation).toMatch(/data T0 wrote into the target image, not snapshot data/);
    // The same through the literal command sequence.
    expect(judge({ id: 'b6', shape: B6, ops: [...modernFleecing(), WRITABLE_EXPORT_ON_TEMP] }).verdict).toBe('accepted-unsafe');
  });

  it('the enumeration counts every graph once, and B6 is among the accepted-but-unsafe ones', () => {
    const r = soundness({ maxExports: 3, temps: ['raw'] });
    const total = Object.values(r.counts).reduce((a, b) => a + b, 0);
    expect(total).toBe(r.graphs);
    expect(new Set(enumerateGraphs({ maxExports: 3, temps: ['raw'] }).map((c) => c.id)).size).toBe(r.graphs);
    const unsafe = r.verdicts.filter((v) => v.verdict === 'accepted-unsafe').map((v) => v.id);
    const safe = r.verdicts.filter((v) => v.verdict === 'accepted-safe').map((v) => v.id);
    expect(unsafe).toContain(shapeId(B6));
    expect(safe).toContain(shapeId(MODERN));
    expect(r.counts['accepted-unsafe']).toBeGreaterThan(0);
    expect(r.counts.refused).toBeGreaterThan(0);
    expect(soundnessText(r)).toMatch(/accepted but unsafe because of a writer on the temp\/target node \(docs\/requirements\/qemu-fleecing\.md §6 B6\): \d+ graphs/);
  });

  it('a writer bypassing cbw is refused by 7.2, but a cbw rule that forgets to unshare WRITE lets it in: unsafe', () => {
    expect(judge(asCase(BYPASS)).verdict).toBe('refused');
    const buggy: SoundnessOptions = { ...DEFAULT_SOUNDNESS, permissions: { cbwRule: 'buggy-no-unshare' } };
    const v = judge(asCase(BYPASS), buggy);
    expect(v.verdict).toBe('accepted-unsafe');
    expect(v.readers[0]?.sourceBypassWriters).toEqual(['export exp-source -> source (root)']);
  });

  it('with a known-bad data plane (S4 without read tracking) the standard modern graph is caught as unsafe', () => {
    const bad = KNOWN_BAD.find((s) => s.name === 's4-no-read-tracking')!;
    expect(judge(asCase(MODERN), { ...DEFAULT_SOUNDNESS, cbwScheme: bad }).verdict).toBe('accepted-unsafe');
    const badLegacy = KNOWN_BAD.find((s) => s.name === 's3-no-read-tracking')!;
    expect(judge(asCase(LEGACY), { ...DEFAULT_SOUNDNESS, legacyScheme: badLegacy }).verdict).toBe('accepted-unsafe');
    // and the good schemes are what the default options use
    expect(DEFAULT_SOUNDNESS.cbwScheme).toBe(S4);
    expect(DEFAULT_SOUNDNESS.legacyScheme).toBe(S3);
  });

  // Confirmed on qemu-storage-daemon 7.2.22: the graph is accepted and a write through the
  // source export changed what the temp export returned (see permissions.test.ts).
  it('an explicit cbw with no parent does not unshare WRITE (6.2 relaxation), so a writer can bypass it: unsafe', () => {
    const shape: GraphShape = { temp: 'qcow2-backed', cbw: 'source->temp', access: false, raw: 'none', backup: false, exports: { source: 'rw', temp: 'ro' } };
    const v = judge(asCase(shape));
    expect(v.verdict).toBe('accepted-unsafe');
    expect(v.readers[0]?.scheme).toBe('S3');
  });
});
