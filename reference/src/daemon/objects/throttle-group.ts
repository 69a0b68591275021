// `--object throttle-group,id=X,limits.bps-total=N,...` (QAPI ThrottleGroupProperties) and its
// legacy spellings `x-bps-total=N,...`: the group a `driver=throttle,throttle-group=X` node
// draws on (reference/src/block/throttle.ts). Properties are applied as QEMU applies them:
// `limits` as one struct, checked on its own (throttle_group_set_limits), then each x- property,
// then the whole configuration is checked once more (throttle_group_obj_complete).
import { BUCKETS, ThrottleGroup, defaultThrottleConfig, throttleConfigError, type BucketConfig, type ThrottleConfig } from '../../block/throttle.ts';
import { UsageError, at, type Keys } from '../keys.ts';
import { registerObjectType } from './registry.ts';

const UINT_MAX = 0xffffffff;

/** A burst length as QEMU holds it: checked against UINT_MAX as a signed number, then stored
 * unsigned (uint64_t), so a negative one becomes huge ("burst length too high ..."). */
function burstLength(v: number, name: string, where: string): number {
  if (v > UINT_MAX) throw new UsageError(`${at(where)}${name} value must be in the range [0, ${UINT_MAX}]`);
  return v < 0 ? 2 ** 64 + v : v;
}

function check(cfg: ThrottleConfig, where: string): void {
  const err = throttleConfigError(cfg);
  if (err) throw new UsageError(`${at(where)}${err}`);
}

/** Reads one spelling (`limits.` struct keys, or `x-` properties) into `cfg`. */
function readInto(cfg: ThrottleConfig, k: Keys, prefix: string, where: string, legacy: boolean): void {
  const value = (key: string): number | undefined => {
    const v = k.integer(`${prefix}${key}`);
    // The x- properties are uint64 setters that refuse a sign (throttle_group_set).
    if (v !== undefined && legacy && v < 0) throw new UsageError(`${at(where)}Property values cannot be negative`);
    return v;
  };
  for (const name of BUCKETS) {
    const b: BucketConfig = cfg.buckets[name];
    const avg = value(name);
    if (avg !== undefined) b.avg = avg;
    const max = value(`${name}-max`);
    if (max !== undefined) b.max = max;
    const len = value(`${name}-max-length`);
    if (len !== undefined) b.burstLength = burstLength(len, `${legacy ? 'x-' : ''}${name}-max-length`, where);
  }
  const size = value('iops-size');
  if (size !== undefined) cfg.opSize = size;
}

registerObjectType<ThrottleConfig>({
  qomType: 'throttle-group',
  parse(k, where) {
    const cfg = defaultThrottleConfig();
    const limits = k.struct('limits');
    if (limits) {
      readInto(cfg, limits, '', where, false);
      limits.finish();
      check(cfg, where);
    }
    readInto(cfg, k, 'x-', where, true);
    check(cfg, where);
    return cfg;
  },
  create(id, cfg) {
    return new ThrottleGroup(id, cfg);
  },
  destroy(instance) {
    (instance as ThrottleGroup).close();
  },
});
