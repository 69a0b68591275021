// A bitmap with one bit per cluster over a byte range: the done, access and copy bitmaps of
// copy-before-write and the overlay's allocation map (QEMU: BdrvDirtyBitmap / HBitmap).

export class ClusterBitmap {
  private readonly bits: Uint8Array;
  readonly clusters: number;

  constructor(
    readonly length: number,
    readonly granularity: number,
    initial = false,
  ) {
    this.clusters = Math.ceil(length / granularity);
    this.bits = new Uint8Array(this.clusters).fill(initial ? 1 : 0);
  }

  clone(): ClusterBitmap {
    const b = new ClusterBitmap(this.length, this.granularity);
    b.bits.set(this.bits);
    return b;
  }

  /** Cluster index range [first, last) touched by a byte range (aligned outward). */
  clusterRange(offset: number, bytes: number): [number, number] {
    const first = Math.floor(offset / this.granularity);
    const last = Math.min(this.clusters, Math.ceil((offset + bytes) / this.granularity));
    return [first, last];
  }

  get(cluster: number): boolean {
    return this.bits[cluster] === 1;
  }

  /** Set or clear every cluster the byte range touches (outward alignment). */
  setRange(offset: number, bytes: number, value: boolean): void {
    const [first, last] = this.clusterRange(offset, bytes);
    this.bits.fill(value ? 1 : 0, first, last);
  }

  setClusters(first: number, last: number, value: boolean): void {
    this.bits.fill(value ? 1 : 0, first, last);
  }

  /** True when every cluster the byte range touches is set. */
  allSet(offset: number, bytes: number): boolean {
    const [first, last] = this.clusterRange(offset, bytes);
    for (let c = first; c < last; c++) if (this.bits[c] !== 1) return false;
    return true;
  }

  /** bdrv_dirty_bitmap_status: whether the byte at `offset` is set, and how many bytes from
   * `offset` (at most `bytes`) share that state. */
  status(offset: number, bytes: number): { set: boolean; bytes: number } {
    const end = offset + bytes;
    const first = Math.floor(offset / this.granularity);
    const value = this.bits[first] === 1;
    let c = first + 1;
    while (c * this.granularity < end && c < this.clusters && (this.bits[c] === 1) === value) c++;
    return { set: value, bytes: Math.min(end, c * this.granularity) - offset };
  }

  /** First run of set clusters within [first, last), at most `maxClusters` long. */
  firstSetRun(first: number, last: number, maxClusters = Infinity): [number, number] | undefined {
    let c = first;
    while (c < last && this.bits[c] !== 1) c++;
    if (c >= last) return undefined;
    let e = c;
    while (e < last && this.bits[e] === 1 && e - c < maxClusters) e++;
    return [c, e];
  }

  count(): number {
    let n = 0;
    for (const b of this.bits) n += b;
    return n;
  }
}
