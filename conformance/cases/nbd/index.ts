// The nbd wire suite: every case of docs/requirements/nbd.md A-G that the targets can exercise.
import type { Suite } from '../../runner/model.ts';
import { registerSuite } from '../../runner/registry.ts';
import { blockStatusCases } from './blockstatus.ts';
import { boundsCases } from './bounds.ts';
import { describeNbdEnv, setupNbd, type NbdEnv } from './env.ts';
import { extendedCases } from './extended.ts';
import { handshakeCases } from './handshake.ts';
import { structuredCases } from './structured.ts';
import { tlsCases } from './tls.ts';
import { transmissionCases } from './transmission.ts';
import { writeCases } from './write.ts';

export const nbdSuite: Suite<NbdEnv> = {
  name: 'nbd',
  description: 'NBD wire conformance (doc/proto.md), case list from docs/requirements/nbd.md §2',
  roles: ['rw'],
  cases: [...handshakeCases, ...transmissionCases, ...boundsCases, ...structuredCases, ...writeCases, ...blockStatusCases, ...extendedCases, ...tlsCases],
  setup: (target, opts) => setupNbd(target, opts),
  describeEnv: describeNbdEnv,
};

registerSuite(nbdSuite);
