// Links from a case's `section` string (runner/model.ts) in the HTML report: requirement ids and
// section numbers of docs/requirements/*.md, docs/verification.md and docs/design.md become
// relative links into this checkout's docs/ (docs/architecture.md "Reports"), and every
// `proto.md "Heading"` becomes a link to that section of the upstream NBD specification. Nothing
// else is linked, so the report never points outside the repository except to the upstream spec.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root: conformance/report/ is two levels below it. */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export const PROTO_MD = 'https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md';
export const PROTO_MD_EXT = 'https://github.com/NetworkBlockDevice/nbd/blob/extension-ext-header/doc/proto.md';

/** Headings of doc/proto.md at master (89ba7b5) as GitHub anchors them. */
const PROTO_ANCHORS = new Set([
  'conventions', 'protocol-phases', 'handshake', 'oldstyle-negotiation', 'newstyle-negotiation',
  'fixed-newstyle-negotiation', 'termination-of-the-session-during-option-haggling', 'transmission',
  'ordering-of-messages-and-writes', 'request-message', 'simple-reply-message', 'structured-reply-chunk-message',
  'terminating-the-transmission-phase', 'reserved-magic-values', 'tls-support', 'notls-mode', 'size-constraints',
  'metadata-querying', 'the-base-metadata-namespace', 'baseallocation-metadata-context', 'values', 'handshake-phase',
  'handshake-flags', 'client-flags', 'transmission-flags', 'option-types', 'option-reply-types', 'transmission-phase',
  'command-flags', 'structured-reply-flags', 'structured-reply-types', 'request-types', 'error-values',
  'experimental-extensions', 'compatibility-and-interoperability', 'baseline', 'maximum-interoperability',
  'certificates-authentication-and-authorisation', 'server-side-requirements', 'forcedtls-mode', 'selectivetls-mode',
  'client-side-requirements', 'security-considerations', 'tls-versions', 'protocol-downgrade-attacks',
]);

/** Names the cases use that are not headings of proto.md, mapped to the section that holds them. */
const PROTO_ALIASES: Record<string, string> = {
  'structured replies': 'structured-reply-chunk-message',
  'block size constraints': 'size-constraints',
  'option haggling': 'fixed-newstyle-negotiation',
  'structured reply chunk message types': 'structured-reply-types',
  nbd_rep_info: 'option-reply-types',
  nbd_info_block_size: 'option-reply-types',
};

/** GitHub's heading anchor: lower case, punctuation dropped, spaces to '-'. */
export function slug(heading: string): string {
  return heading.toLowerCase().replace(/[^a-z0-9 _-]/g, '').replace(/ /g, '-');
}

/** The upstream URL of a proto.md section named in a case section, e.g. `"Option types"` or `NBD_CMD_BLOCK_STATUS`. */
export function protoUrl(name: string, extension = false): string {
  if (extension && name === 'Extended headers') return `${PROTO_MD_EXT}#extended-reply-chunk-message`;
  const anchor = PROTO_ALIASES[name.toLowerCase()]
    ?? (PROTO_ANCHORS.has(slug(name)) ? slug(name)
      : name.startsWith('NBD_CMD_FLAG_') ? 'command-flags'
      : name.startsWith('NBD_CMD_') ? 'request-types'
      : name.startsWith('NBD_FLAG_') ? 'transmission-flags'
      : name.startsWith('NBD_OPT_') ? 'option-types'
      : name.startsWith('NBD_REP_') || name.startsWith('NBD_INFO_') ? 'option-reply-types'
      : undefined);
  const base = extension ? PROTO_MD_EXT : PROTO_MD;
  return anchor ? `${base}#${anchor}` : base;
}

const PROTO_REF = /proto\.md( \(extension-ext-header\))? (?:"([^"]+)"|(NBD_[A-Z_]+))/g;

/** The upstream proto.md sections a case section names, in order, without repeats. */
export function upstreamLinks(section: string): string[] {
  const out: string[] = [];
  for (const m of section.matchAll(PROTO_REF)) {
    const url = protoUrl(m[2] ?? m[3]!, Boolean(m[1]));
    if (!out.includes(url)) out.push(url);
  }
  return out;
}

function esc(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&#39;' })[c]!);
}

function a(href: string, text: string): string {
  return `<a href="${esc(href)}">${esc(text)}</a>`;
}

/** Relative URL from the directory a page is written to, to a file of this checkout. */
export function repoHref(fromDir: string, repoPath: string): string {
  return path.relative(fromDir, path.join(REPO_ROOT, repoPath)).split(path.sep).join('/');
}

/** Links the ids and section numbers that follow a docs/ path, up to the next ';'. */
function docRefs(doc: string, rest: string, href: string): string {
  const isNbd = doc === 'docs/requirements/nbd.md';
  const isQemu = doc === 'docs/requirements/qemu-fleecing.md';
  const token = /§(\d+)(?:\.(\d+))?|\b([A-J])(\d{1,2})\b|"([^"]+)"/g;
  let out = '';
  let last = 0;
  for (const m of rest.matchAll(token)) {
    let anchor: string | undefined;
    if (m[1] !== undefined && !doc.endsWith('design.md')) anchor = m[2] !== undefined ? `s${m[1]}-${m[2]}` : `s${m[1]}`;
    else if (m[3] !== undefined && isNbd && Number(m[4]) >= 1 && Number(m[4]) <= 93) anchor = `${m[3].toLowerCase()}${m[4]}`;
    else if (m[3] === 'B' && isQemu && Number(m[4]) <= 12) anchor = `b${m[4]}`;
    else if (m[5] !== undefined && (doc.endsWith('design.md') || doc.endsWith('architecture.md'))) anchor = slug(m[5]);
    if (!anchor) continue;
    out += esc(rest.slice(last, m.index)) + a(`${href}#${anchor}`, m[0]);
    last = m.index! + m[0].length;
  }
  return out + esc(rest.slice(last));
}

/**
 * A case's section as HTML, written to a page in `fromDir`: docs/ citations link into the
 * checkout (relative), spec/ paths link to the source, proto.md sections link upstream.
 */
export function sectionHtml(section: string, fromDir: string): string {
  return section
    .split(/(;\s*)/)
    .map((part) => {
      if (/^;\s*$/.test(part)) return esc(part);
      const doc = /^(.*?)(docs\/[\w/.-]+\.md)(.*)$/s.exec(part);
      if (doc) {
        const href = repoHref(fromDir, doc[2]!);
        return esc(doc[1]!) + a(href, doc[2]!) + docRefs(doc[2]!, doc[3]!, href);
      }
      let out = '';
      let last = 0;
      const refs = new RegExp(`${PROTO_REF.source}|\\bspec/[\\w/.-]*[\\w/]`, 'g');
      for (const m of part.matchAll(refs)) {
        const href = m[0].startsWith('spec/') ? repoHref(fromDir, m[0]) : protoUrl(m[2] ?? m[3]!, Boolean(m[1]));
        out += esc(part.slice(last, m.index)) + a(href, m[0]);
        last = m.index! + m[0].length;
      }
      return out + esc(part.slice(last));
    })
    .join('');
}
