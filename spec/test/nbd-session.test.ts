import { describe, expect, it } from 'vitest';
import { allExecutions, explore, formatLabel, neverEnabled } from '../explorer/index.ts';
import { NBD_SESSION, NBD_SESSION_BAD, nbdSessionModel } from '../models/nbd-session/index.ts';

describe('NBD session model (docs/requirements/nbd.md §1.2-§1.7)', () => {
  it('holds exhaustively, every session ends closed, every action is enabled', () => {
    const r = explore(nbdSessionModel());
    expect(r.verdict).toBe('ok');
    expect(r.exhaustive).toBe(true);
    expect(r.terminal).toBeGreaterThan(0);
    expect(neverEnabled(r)).toEqual([]);
  });

  it('says which message may follow which', () => {
    const m = nbdSessionModel(NBD_SESSION, { options: 1, requests: 1, inflight: 1 });
    let s = m.initial()[0]!;
    const next = () => m.enabled(s).map((a) => formatLabel(m.label(a)));
    expect(next()).toEqual(['server.greet()']);
    const take = (label: string) => {
      const a = m.enabled(s).find((x) => formatLabel(m.label(x)) === label);
      expect(a, `${label} in ${next().join(' ')}`).toBeDefined();
      s = m.step(s, a!);
    };
    take('server.greet()');
    take('client.clientFlags()');
    take('client.option(name=GO)');
    // While GO is pending, the client may send nothing; the server answers INFO or an error.
    expect(next()).toEqual(['server.optionReply(reply=INFO)', 'server.optionReply(reply=ERR_UNKNOWN)']);
    take('server.optionReply(reply=INFO)');
    expect(next()).toEqual(['server.optionReply(reply=ACK)']);
    take('server.optionReply(reply=ACK)');
    take('client.request(cmd=READ)');
    // No structured replies negotiated: the READ gets a simple reply.
    expect(next()).toContain('server.reply(cookie=0, chunk=simple)');
    expect(next()).not.toContain('server.reply(cookie=0, chunk=data)');
  });

  for (const v of NBD_SESSION_BAD) {
    it(`${v.name} is caught: ${v.summary}`, () => {
      const r = explore(nbdSessionModel(v));
      expect(r.verdict).toBe('violation');
    });
  }

  it('enumerates complete sessions for wire-trace generation', () => {
    const execs = [...allExecutions(nbdSessionModel(NBD_SESSION, { options: 1, requests: 1, inflight: 1 }))];
    expect(execs.length).toBeGreaterThan(5);
    expect(execs.every((e) => !e.deadlocked && e.final.phase === 'closed')).toBe(true);
  });
});
