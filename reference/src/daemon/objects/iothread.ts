// `--object iothread,id=X[,poll-max-ns=,poll-grow=,poll-shrink=,aio-max-batch=]`: accepted so
// QEMU's command lines run unchanged, with no effect: the reference serves every export from its
// one event loop. Options that name an iothread (`--export ...,iothread=X`) must name one.
import { UsageError, at } from '../keys.ts';
import { registerObjectType } from './registry.ts';

export interface IothreadProps {
  readonly pollMaxNs: number;
}

registerObjectType<IothreadProps>({
  qomType: 'iothread',
  parse(k, where) {
    // iothread_set_param: int64 properties, each checked for [0, INT64_MAX] in these words.
    const param = (key: string, def: number): number => {
      const v = k.integer(key) ?? def;
      if (v < 0) throw new UsageError(`${at(where)}${key} value must be in range [0, 9223372036854775807]`);
      return v;
    };
    const pollMaxNs = param('poll-max-ns', 32768);
    param('poll-grow', 0);
    param('poll-shrink', 0);
    param('aio-max-batch', 0);
    return { pollMaxNs };
  },
});
