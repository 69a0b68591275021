// The permission table of docs/requirements/qemu-fleecing.md §1.5, edge by edge for both graphs, and the measured
// conflicts of §1.4, on the reference block layer.
import { describe, expect, it } from 'vitest';
import { BlockGraph, CopyBeforeWriteNode, DRIVERS, exportPerms, PERM, type BlockGraphInfo } from '../src/block/index.ts';
import type { DriverContext } from '../src/block/drivers/registry.ts';
import type { BdrvChild } from '../src/block/node.ts';

const MB = 1024 * 1024;
const ALL = ['consistent-read', 'write', 'write-unchanged', 'resize'];
const ALL_BUT_RESIZE = ['consistent-read', 'write', 'write-unchanged'];

/** Edges as "parent -> child [name]" => {perm, shared} with sorted names; parents that are
 * unnamed backends are told apart by the child they sit on. */
function edgeTable(info: BlockGraphInfo): Map<string, { perm: string[]; shared: string[] }> {
  const byId = new Map(info.nodes.map((n) => [n.id, n]));
  const out = new Map<string, { perm: string[]; shared: string[] }>();
  for (const e of info.edges) {
    const p = byId.get(e.parent)!;
    const c = byId.get(e.child)!;
    const norm = (n: string): string => (n.startsWith('#block') ? '#cbw' : n);
    const cname = norm(c.name);
    const pname = p.type === 'block-backend' ? `BB(${p.name || cname})` : p.type === 'block-job' ? `job(${p.name})` : norm(p.name);
    const key = `${pname} -> ${cname} [${e.name}]`;
    out.set(key, { perm: [...e.perm].sort(), shared: [...e['shared-perm']].sort() });
  }
  return out;
}

function expectEdge(t: ReturnType<typeof edgeTable>, key: string, perm: string[], shared: string[]): void {
  expect(t.get(key), `edge ${key} (have: ${[...t.keys()].join('; ')})`).toEqual({ perm: [...perm].sort(), shared: [...shared].sort() });
}

function exportOn(graph: BlockGraph, node: string, writable: boolean) {
  const p = exportPerms(writable);
  return graph.attachBackend('an unnamed block device', node, p.perm, p.shared);
}

/** Modern graph of §1.5: source is a format node over a file (the reference's overlay without
 * backing stands in for qcow2), temp a plain raw node. */
function modern(drivers?: ConstructorParameters<typeof BlockGraph>[0]): BlockGraph {
  const g = new BlockGraph(drivers);
  g.addNode({ driver: 'overlay', 'node-name': 'source', file: { driver: 'memory', 'node-name': 'source-file', size: 4 * MB } });
  g.addNode({ driver: 'memory', 'node-name': 'temp', size: 4 * MB });
  g.addNode({ driver: 'copy-before-write', 'node-name': 'fl-cbw', file: 'source', target: 'temp' });
  g.addNode({ driver: 'snapshot-access', 'node-name': 'fl-access', file: 'fl-cbw' });
  exportOn(g, 'fl-cbw', true);
  exportOn(g, 'fl-access', false);
  return g;
}

function legacy(): BlockGraph {
  const g = new BlockGraph();
  g.addNode({ driver: 'overlay', 'node-name': 'source', file: { driver: 'memory', 'node-name': 'source-file', size: 4 * MB } });
  g.addNode({ driver: 'overlay', 'node-name': 'temp', file: { driver: 'memory', 'node-name': 'temp-file', size: 4 * MB }, backing: 'source' });
  exportOn(g, 'source', true);
  g.startBackup({ jobId: 'fleecing', device: 'source', target: 'temp', sync: 'none' });
  exportOn(g, 'temp', false);
  return g;
}

describe('permission table, modern graph (docs/requirements/qemu-fleecing.md §1.5)', () => {
  const t = edgeTable(modern().queryGraph());
  it('NBD export, read-only -> fl-access', () => expectEdge(t, 'BB(fl-access) -> fl-access [root]', ['consistent-read'], ALL_BUT_RESIZE));
  it('NBD export, writable -> fl-cbw', () => expectEdge(t, 'BB(fl-cbw) -> fl-cbw [root]', ['write', 'consistent-read'], ALL_BUT_RESIZE));
  it('fl-access -> fl-cbw [file]: none / all', () => expectEdge(t, 'fl-access -> fl-cbw [file]', [], ALL));
  it('fl-cbw -> source [file]: unshares write and resize', () =>
    expectEdge(t, 'fl-cbw -> source [file]', ['write', 'consistent-read'], ['write-unchanged', 'consistent-read']));
  it('fl-cbw -> temp [target]: write / all but resize', () => expectEdge(t, 'fl-cbw -> temp [target]', ['write'], ALL_BUT_RESIZE));
  it('source -> its file: storage defaults', () =>
    expectEdge(t, 'source -> source-file [file]', ['resize', 'write', 'consistent-read'], ['write-unchanged', 'consistent-read']));
  it('lists exactly these edges', () => expect(t.size).toBe(6));
});

describe('permission table, legacy graph (docs/requirements/qemu-fleecing.md §1.5)', () => {
  const t = edgeTable(legacy().queryGraph());
  it('implicit cbw -> source [file]', () => expectEdge(t, '#cbw -> source [file]', ['write', 'consistent-read'], ['write-unchanged', 'consistent-read']));
  it('implicit cbw -> temp [target]', () => expectEdge(t, '#cbw -> temp [target]', ['write'], ALL_BUT_RESIZE));
  it('temp -> source [backing]: consistent-read / all', () => expectEdge(t, 'temp -> source [backing]', ['consistent-read'], ALL));
  it('backup job -> cbw (main node): none / all', () => expectEdge(t, 'job(fleecing) -> #cbw [main node]', [], ALL));
  it('backup job -> temp (target): none / all', () => expectEdge(t, 'job(fleecing) -> temp [target]', [], ALL));
  it('export live re-parented onto the filter', () => expectEdge(t, 'BB(#cbw) -> #cbw [root]', ['write', 'consistent-read'], ALL_BUT_RESIZE));
  it('export fleece -> temp', () => expectEdge(t, 'BB(temp) -> temp [root]', ['consistent-read'], ALL_BUT_RESIZE));
  it('nothing is left on source but the filter and the backing edge', () => {
    const onSource = [...t.keys()].filter((k) => / -> source \[/.test(k));
    expect(onSource.sort()).toEqual(['#cbw -> source [file]', 'temp -> source [backing]']);
  });
});

const WRITE_CONFLICT =
  "Permission conflict on node 'source': permissions 'write' are both required by an unnamed block device (uses node 'source' as 'root' child) and unshared by node 'fl-cbw' (uses node 'source' as 'file' child).";

describe('measured conflicts (docs/requirements/qemu-fleecing.md §1.4)', () => {
  it('a writable export on source under cbw is refused with QEMU 7.2 wording', () => {
    const g = modern();
    expect(() => exportOn(g, 'source', true)).toThrow(WRITE_CONFLICT);
  });

  it('resizing fl-cbw is refused: the NBD exports unshare resize', () => {
    const g = modern();
    expect(() => g.resize('fl-cbw', 8 * MB)).toThrow(
      "Permission conflict on node 'fl-cbw': permissions 'resize' are both required by an unnamed block device (uses node 'fl-cbw' as 'root' child) and unshared by an unnamed block device (uses node 'fl-cbw' as 'root' child).",
    );
  });

  it('blockdev-del of a node in use is refused by the user check, not permissions', async () => {
    const g = modern();
    await expect(g.deleteNode('fl-cbw')).rejects.toThrow('Node fl-cbw is in use');
  });

  it('hazard B6: a writable export on temp is accepted (cbw shares write on its target)', () => {
    const g = modern();
    expect(() => exportOn(g, 'temp', true)).not.toThrow();
  });

  it('a read-only export on source under cbw is accepted', () => {
    const g = modern();
    expect(() => exportOn(g, 'source', false)).not.toThrow();
  });

  it('a refused change is rolled back whole: graph and permissions unchanged', () => {
    const g = new BlockGraph();
    g.addNode({ driver: 'memory', 'node-name': 'source', size: MB });
    g.addNode({ driver: 'memory', 'node-name': 'temp', size: MB });
    exportOn(g, 'source', true);
    g.addNode({ driver: 'copy-before-write', 'node-name': 'fl-cbw', file: 'source', target: 'temp' });
    const before = JSON.stringify(g.queryGraph());
    // Exporting the filter gives it a parent: it now unshares write on source, where the
    // existing writable export holds it.
    expect(() => exportOn(g, 'fl-cbw', true)).toThrow(/Permission conflict on node 'source'/);
    expect(JSON.stringify(g.queryGraph())).toBe(before);
    // A nested blockdev-add that fails half-way leaves no node behind.
    expect(() => g.addNode({ driver: 'raw', 'node-name': 'r', file: { driver: 'memory', size: MB, bogus: 1 } })).toThrow(/Parameter 'file.bogus' is unexpected/);
    expect(g.allNodes().map((n) => n.nodeName).sort()).toEqual(['fl-cbw', 'source', 'temp']);
  });

  it('a read-only node refuses a writer', () => {
    const g = new BlockGraph();
    g.addNode({ driver: 'memory', 'node-name': 'ro', size: MB, 'read-only': true });
    expect(() => exportOn(g, 'ro', true)).toThrow(/Block node 'ro' is read-only/);
    expect(() => exportOn(g, 'ro', false)).not.toThrow();
  });

  it('known-bad variant: a cbw that forgets to unshare write lets the conflicting export in', () => {
    class LaxCbw extends CopyBeforeWriteNode {
      override childPerm(child: BdrvChild, perm: number, shared: number) {
        const p = super.childPerm(child, perm, shared);
        return child.role === 'filtered' ? { perm: p.perm, shared: p.shared | PERM.WRITE } : p;
      }
    }
    const g = modern({ drivers: { ...DRIVERS, 'copy-before-write': (ctx: DriverContext) => new LaxCbw(ctx) } });
    // The very check above would fail on this variant:
    expect(() => exportOn(g, 'source', true)).not.toThrow();
    const t = edgeTable(g.queryGraph());
    expect(t.get('fl-cbw -> source [file]')!.shared).toContain('write');
  });
});
