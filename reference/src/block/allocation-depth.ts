// The allocation depth of a range, as QEMU's NBD server reports it in qemu:allocation-depth
// (nbd/server.c blockalloc_to_extents over bdrv_is_allocated_above): 1 where the node itself
// allocates the data, one more per backing layer down to the one that does, 0 where no layer
// does. A filter is not a layer of its own: its answer is its child's.
import type { BlockNode } from './node.ts';

export async function allocationDepth(node: BlockNode, offset: number, bytes: number): Promise<{ length: number; depth: number }> {
  let n = node;
  let depth = 1;
  let length = bytes;
  for (;;) {
    const ext = await n.blockStatus(offset, length);
    length = Math.max(1, Math.min(length, ext.length));
    if (ext.allocated) return { length, depth };
    const cow = n.backing();
    if (cow) {
      n = cow.node;
      depth++;
      continue;
    }
    const filtered = n.filtered();
    if (!filtered) return { length, depth: 0 };
    n = filtered.node;
  }
}

/** Extents covering [offset, offset+bytes), adjacent equal depths merged. */
export async function allocationDepthExtents(node: BlockNode, offset: number, bytes: number): Promise<{ length: number; depth: number }[]> {
  const out: { length: number; depth: number }[] = [];
  for (let pos = offset; pos < offset + bytes; ) {
    const e = await allocationDepth(node, pos, offset + bytes - pos);
    const last = out[out.length - 1];
    if (last && last.depth === e.depth) last.length += e.length;
    else out.push({ ...e });
    pos += e.length;
  }
  return out;
}
