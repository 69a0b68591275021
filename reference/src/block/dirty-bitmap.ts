// A named dirty bitmap on a node (QEMU's BdrvDirtyBitmap as block-dirty-bitmap-* sees it): a
// cluster bitmap that records writes while enabled ("recording"), can be busy (exported over NBD,
// or held by a transaction that will remove it), and is never persistent here: the reference's
// formats have nowhere to store one, as QEMU's raw and file drivers have not
// (bdrv_can_store_new_dirty_bitmap). Checks and messages follow block/dirty-bitmap.c in 7.2.
import { ClusterBitmap } from './bitmap.ts';
import { BlockError } from './errors.ts';

/** What an operation allows (BDRV_BITMAP_DEFAULT refuses busy bitmaps; ALLOW_RO too). */
export class DirtyBitmap extends ClusterBitmap {
  enabled = true;
  /** Holders: NBD exports that expose it, a pending transactional remove. */
  busy = 0;

  constructor(
    readonly name: string,
    readonly nodeName: string,
    length: number,
    granularity: number,
  ) {
    super(length, granularity);
  }

  /** bdrv_dirty_bitmap_check: a busy bitmap cannot be changed, merged from or exported. */
  check(): void {
    if (this.busy > 0) {
      throw new BlockError('EBUSY', `Bitmap '${this.name}' is currently in use by another operation and cannot be used`, { node: this.nodeName });
    }
  }

  /** The set bits, for a transaction to restore on abort. */
  snapshot(): ClusterBitmap {
    return this.clone();
  }

  restore(from: ClusterBitmap): void {
    this.setClusters(0, this.clusters, false);
    this.orWith(from);
  }

  /** bdrv_merge_dirty_bitmap: every byte dirty in `src` becomes dirty here. Bitmaps of different
   * granularity merge (hbitmap_merge); of different sizes they do not (hbitmap_can_merge). */
  orWith(src: ClusterBitmap): void {
    if (src.length !== this.length) throw new BlockError('EINVAL', 'Bitmaps are incompatible and can\'t be merged', { node: this.nodeName });
    for (let c = 0; c < src.clusters; c++) {
      if (src.get(c)) this.setRange(c * src.granularity, Math.min(src.granularity, src.length - c * src.granularity), true);
    }
  }
}
