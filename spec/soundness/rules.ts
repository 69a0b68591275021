// The permission rule sets the soundness run compares: QEMU 7.2 as measured (its cbw rule and
// image locking), the reference as it stands (9.1's cbw rule, no storage identity) and the
// storage-aware rules the reference is to implement (spec/models/permissions/storage.ts).
import { QEMU_7_2, REFERENCE, STORAGE_AWARE, type ModelOptions } from '../models/permissions/graph.ts';

export interface RuleSet {
  readonly name: string;
  readonly summary: string;
  readonly options: ModelOptions;
}

export const RULE_SETS: readonly RuleSet[] = [
  { name: 'qemu-7.2', summary: "QEMU 7.2: its copy-before-write rule, image locking on (file nodes over one file check each other's locks)", options: QEMU_7_2 },
  { name: 'reference', summary: 'the reference as it stands: QEMU 9.1 copy-before-write rule, every file node its own storage', options: REFERENCE },
  {
    name: 'storage-aware',
    summary: 'what the reference is to do: permissions across all nodes over one file as one node, and no snapshot reader a write can reach around copy-before-write or the backup serialisation',
    options: STORAGE_AWARE,
  },
];

export function findRuleSet(name: string): RuleSet | undefined {
  return RULE_SETS.find((r) => r.name === name);
}
