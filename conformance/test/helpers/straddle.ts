// The failure signature of findings F1/F3 on the two straddle cases that read after a plain live
// write (with DF, and without structured replies): shared by the implementations that show it,
// QEMU 7.2 (fleecing-qemu.test.ts) and the reference's known-bad reference-hbitmap-status
// (fleecing-reference.test.ts), so both are held to the same words.
import { expect } from 'vitest';
import type { CaseResult } from '../../runner/model.ts';

export function expectStraddleReadsFail(by: ReadonlyMap<string, CaseResult>): void {
  for (const [id, how, chunk] of [
    ['fleecing/straddle/df-read', 'a snapshot read sent with NBD_CMD_FLAG_DF', 'inside an NBD_REPLY_TYPE_OFFSET_DATA chunk \\[0x8000,\\+0x10000\\)'],
    ['fleecing/straddle/simple-reply-read', 'a snapshot read on a connection without structured replies', 'in a simple reply'],
  ] as const) {
    const r = by.get(id)!;
    expect(r.verdict, r.reason).toBe('fail');
    expect(r.reason.startsWith(`MUST: No snapshot read ever observes post-snapshot data (docs/design.md; spec/models/fleecing invariant): ${how}`), r.reason).toBe(true);
    expect(r.reason).toMatch(new RegExp(`snapshot read of \\[0x8000,\\+0x10000\\)${id.endsWith('df-read') ? ' with NBD_CMD_FLAG_DF' : ''} on connection \\d+ .* returned 32768 byte\\(s\\) that differ from the snapshot, the first at 0x8000 \\(snapshot byte 0x26, got 0x82, ${chunk}\\): that is post-snapshot data, written by live write #1 of \\[0x0,\\+0x10000\\)`));
    expect(r.reason).toMatch(/the read starts inside \[0x0,\+0x10000\), the cluster that live write #1 had copied to the temp image .* and ends in \[0x10000,\+0x10000\), which no live request had touched/);
  }
}
