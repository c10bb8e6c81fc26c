/**
 * PostgreSQL's custom archive format (what `pg_dump -Fc` writes and `pg_restore` reads), as far as this
 * project needs it: reading the header and table of contents of the schema archives a backup holds, and
 * writing one archive that joins them with the table data and sequence values stored in the repository.
 * The result is what `pg_dump -Fc` would have written to a pipe: the TOC first, with every data offset "not
 * set", then the data blocks in TOC order, which `pg_restore` reads front to back (no seeking).
 *
 * The layout follows pg_backup_archiver.c (WriteHead, WriteToc) and pg_backup_custom.c (_WriteExtraToc,
 * _StartData, _EndData) of PostgreSQL 12 to 17, archive versions 1.14 to 1.16:
 * - an int is a sign byte then `intSize` little-endian bytes of the absolute value;
 * - a string is its byte length as an int then the bytes, or the int -1 for NULL;
 * - a data block is the byte 1 (BLK_DATA), the entry's dump id, then length-prefixed chunks ending with 0.
 * An archive is written in the version of the archive it was built from, so a `pg_restore` that could read
 * what `pg_dump` wrote for the backup reads this one too.
 */
import { createDeflate } from 'node:zlib';
import { RestoreError } from './errors.ts';

const MAGIC = 'PGDMP';
const FORMAT_CUSTOM = 1;
const BLK_DATA = 1;
const OFFSET_NOT_SET = 1;
const OFFSET_NO_DATA = 3;

export const SECTION_DATA = 3;

function version(major: number, minor: number, rev = 0): number {
  return (major * 256 + minor) * 256 + rev;
}
const V1_14 = version(1, 14);
const V1_15 = version(1, 15);
const V1_16 = version(1, 16);
/** The versions written by the pg_dump releases this reader knows (12 to 17). */
const OLDEST = V1_14;
const NEWEST = version(1, 16, 255);

export interface ArchiveHeader {
  readonly version: number;
  readonly intSize: number;
  readonly offSize: number;
  /** When the dump was made, as pg_dump recorded it (local time fields). */
  readonly created: readonly number[];
  readonly database: string | null;
  readonly serverVersion: string | null;
  readonly dumpVersion: string | null;
}

export interface TocEntry {
  readonly dumpId: number;
  readonly hadDumper: boolean;
  readonly tableOid: string;
  readonly oid: string;
  readonly tag: string | null;
  readonly desc: string | null;
  readonly section: number;
  readonly defn: string | null;
  readonly dropStmt: string | null;
  readonly copyStmt: string | null;
  readonly namespace: string | null;
  readonly tablespace: string | null;
  readonly tableam: string | null;
  /** 1.16 and later. */
  readonly relkind: number;
  readonly owner: string | null;
  readonly dependencies: readonly number[];
}

export interface ArchiveToc {
  readonly header: ArchiveHeader;
  readonly entries: readonly TocEntry[];
}

/** Reads the header and TOC of a custom-format archive (its data blocks, if any, are not read). */
export function readArchiveToc(archive: Buffer): ArchiveToc {
  let at = 0;
  const need = (bytes: number) => {
    if (at + bytes > archive.length) throw new RestoreError('the schema archive is truncated');
  };
  const byte = () => {
    need(1);
    return archive[at++]!;
  };
  let intSize = 4;
  const int = () => {
    const negative = byte() !== 0;
    need(intSize);
    let value = 0;
    for (let i = 0; i < intSize; i++) value += archive[at + i]! * 2 ** (8 * i);
    at += intSize;
    return negative ? -value : value;
  };
  const str = (): string | null => {
    const length = int();
    if (length < 0) return null;
    need(length);
    const text = archive.toString('utf8', at, at + length);
    at += length;
    return text;
  };
  need(5);
  if (archive.toString('latin1', 0, 5) !== MAGIC)
    throw new RestoreError('not a pg_dump custom-format archive');
  at = 5;
  const archiveVersion = version(byte(), byte(), byte());
  if (archiveVersion < OLDEST || archiveVersion > NEWEST)
    throw new RestoreError(
      `pg_dump archive version ${archiveVersion >> 16}.${(archiveVersion >> 8) & 0xff} is not supported (1.14 to 1.16)`,
    );
  intSize = byte();
  const offSize = byte();
  if (intSize < 4 || intSize > 8 || offSize < 4 || offSize > 8)
    throw new RestoreError('the schema archive has an unexpected integer size');
  if (byte() !== FORMAT_CUSTOM) throw new RestoreError('the schema archive is not in the custom format');
  if (archiveVersion >= V1_15) byte();
  else int();
  const created = Array.from({ length: 7 }, () => int());
  const header: ArchiveHeader = {
    version: archiveVersion,
    intSize,
    offSize,
    created,
    database: str(),
    serverVersion: str(),
    dumpVersion: str(),
  };
  const count = int();
  const entries: TocEntry[] = [];
  for (let i = 0; i < count; i++) {
    const dumpId = int();
    const hadDumper = int() !== 0;
    const tableOid = str() ?? '0';
    const oid = str() ?? '0';
    const tag = str();
    const desc = str();
    const section = int();
    const defn = str();
    const dropStmt = str();
    const copyStmt = str();
    const namespace = str();
    const tablespace = str();
    const tableam = str();
    const relkind = archiveVersion >= V1_16 ? int() : 0;
    const owner = str();
    str(); // "false": the obsolete WITH OIDS flag
    const dependencies: number[] = [];
    for (let dependency = str(); dependency !== null; dependency = str())
      dependencies.push(Number(dependency));
    // custom format: the data offset (a flag byte, then offSize bytes)
    byte();
    need(offSize);
    at += offSize;
    entries.push({
      dumpId,
      hadDumper,
      tableOid,
      oid,
      tag,
      desc,
      section,
      defn,
      dropStmt,
      copyStmt,
      namespace,
      tablespace,
      tableam,
      relkind,
      owner,
      dependencies,
    });
  }
  return { header, entries };
}

/** One entry of the archive being written, with where its data comes from (table data only). */
export interface OutputEntry extends TocEntry {
  readonly data?: () => AsyncIterable<Buffer>;
}

/**
 * Writes a custom-format archive: header, TOC, then each entry's data as one block, compressed with zlib
 * at `level` (0 for none), chunk by chunk so that memory stays bounded whatever the table's size.
 */
export async function* writeArchive(
  header: ArchiveHeader,
  entries: readonly OutputEntry[],
  level: number,
): AsyncGenerator<Buffer> {
  const out = new ArchiveWriter(header.intSize, header.offSize);
  out.raw(Buffer.from(MAGIC, 'latin1'));
  out.byte(header.version >> 16);
  out.byte((header.version >> 8) & 0xff);
  out.byte(header.version & 0xff);
  out.byte(header.intSize);
  out.byte(header.offSize);
  out.byte(FORMAT_CUSTOM);
  if (header.version >= V1_15) out.byte(level > 0 ? 1 : 0);
  else out.int(level);
  for (const field of header.created) out.int(field);
  out.str(header.database);
  out.str(header.serverVersion);
  out.str(header.dumpVersion);
  out.int(entries.length);
  for (const entry of entries) {
    out.int(entry.dumpId);
    out.int(entry.data ? 1 : 0);
    out.str(entry.tableOid);
    out.str(entry.oid);
    out.str(entry.tag);
    out.str(entry.desc);
    out.int(entry.section);
    out.str(entry.defn);
    out.str(entry.dropStmt);
    out.str(entry.copyStmt);
    out.str(entry.namespace);
    out.str(entry.tablespace);
    if (header.version >= V1_14) out.str(entry.tableam);
    if (header.version >= V1_16) out.int(entry.relkind);
    out.str(entry.owner);
    out.str('false');
    for (const dependency of entry.dependencies) out.str(String(dependency));
    out.str(null);
    out.offset(entry.data ? OFFSET_NOT_SET : OFFSET_NO_DATA);
    if (out.size >= 64 * 1024) yield out.take();
  }
  for (const entry of entries) {
    if (!entry.data) continue;
    out.byte(BLK_DATA);
    out.int(entry.dumpId);
    yield out.take();
    const source = level > 0 ? deflated(entry.data(), level) : entry.data();
    for await (const data of source) {
      if (data.length === 0) continue;
      out.int(data.length);
      yield out.take();
      yield data;
    }
    out.int(0);
  }
  yield out.take();
}

async function* deflated(data: AsyncIterable<Buffer>, level: number): AsyncGenerator<Buffer> {
  const deflate = createDeflate({ level });
  const feeding = (async () => {
    try {
      for await (const chunk of data)
        if (!deflate.write(chunk)) await new Promise((resolve) => deflate.once('drain', resolve));
      deflate.end();
    } catch (error) {
      deflate.destroy(error as Error);
    }
  })();
  for await (const chunk of deflate) yield chunk as Buffer;
  await feeding;
}

class ArchiveWriter {
  private parts: Buffer[] = [];
  size = 0;

  private readonly intSize: number;
  private readonly offSize: number;

  constructor(intSize: number, offSize: number) {
    this.intSize = intSize;
    this.offSize = offSize;
  }

  raw(data: Buffer): void {
    this.parts.push(data);
    this.size += data.length;
  }

  byte(value: number): void {
    this.raw(Buffer.of(value));
  }

  int(value: number): void {
    const data = Buffer.alloc(1 + this.intSize);
    data[0] = value < 0 ? 1 : 0;
    let rest = Math.abs(value);
    for (let i = 0; i < this.intSize; i++) {
      data[1 + i] = rest % 256;
      rest = Math.floor(rest / 256);
    }
    this.raw(data);
  }

  str(value: string | null): void {
    if (value === null) {
      this.int(-1);
      return;
    }
    const data = Buffer.from(value, 'utf8');
    this.int(data.length);
    this.raw(data);
  }

  /** A data offset that is not known (the archive is written front to back), or none. */
  offset(flag: number): void {
    const data = Buffer.alloc(1 + this.offSize);
    data[0] = flag;
    this.raw(data);
  }

  take(): Buffer {
    const data = Buffer.concat(this.parts);
    this.parts = [];
    this.size = 0;
    return data;
  }
}
