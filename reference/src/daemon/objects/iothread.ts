// `--object iothread,id=X[,poll-max-ns=,poll-grow=,poll-shrink=,aio-max-batch=]`: accepted so
// QEMU's command lines run unchanged, with no effect: the reference serves every export from its
// one event loop. Options that name an iothread (`--export ...,iothread=X`) must name one.
import { registerObjectType } from './registry.ts';

export interface IothreadProps {
  readonly pollMaxNs: number;
}

registerObjectType<IothreadProps>({
  qomType: 'iothread',
  parse(k) {
    const pollMaxNs = k.int('poll-max-ns', 32768);
    k.int('poll-grow', 0);
    k.int('poll-shrink', 0);
    k.int('aio-max-batch', 0);
    return { pollMaxNs };
  },
});
