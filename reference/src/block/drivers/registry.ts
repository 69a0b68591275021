// What a driver gets when it is opened (blockdev-add), and the table of drivers by name.
import type { BlockNode, NodeCommonOptions } from '../node.ts';
import type { OptionReader } from '../options.ts';
import type { ChildRole } from '../perm.ts';
import type { BlockGraph } from '../graph.ts';

export interface DriverContext {
  readonly nodeName: string;
  readonly opts: OptionReader;
  readonly common: NodeCommonOptions;
  readonly graph: BlockGraph;
  /** Opens the child named by option `key` (a node-name reference or a nested blockdev object)
   * and links it under `parent` with child name `name` (defaults to `key`). Returns undefined
   * when the option is absent and not required. `fallback` is opened instead when the option is
   * absent (a format driver's default child, e.g. the backing file an image names). */
  addChild(
    parent: BlockNode,
    key: string,
    role: ChildRole,
    required: boolean,
    name?: string,
    fallback?: Readonly<Record<string, unknown>>,
  ): BlockNode | undefined;
}

export type DriverFactory = (ctx: DriverContext) => BlockNode;
