// Package storage is the wormserver's durable record log: it persists the
// records the Paxos acceptor (worm/paxos) emits, so that an acceptor
// persists before it replies, and rebuilds the acceptor after a restart.
//
// # Usage
//
// A wormserver opens its data directory once; Open returns the log and
// the acceptor recovered from it:
//
//	lg, acc, err := storage.Open(dir, storage.Options{SegmentSize: 4096, Cluster: "prod-1"})
//	if err != nil { ... } // ErrLocked, ErrForeign, ErrFormat, ErrCorrupt: refuse to start
//	eng := server.NewEngine(acc, lg, logger, notify)
//
// The engine (worm/server) then drives the log through three calls, the
// Log interface of worm/server:
//
//   - Reserve(n) before it lets the acceptor handle a mutating request:
//     it fails with an error wrapping ErrNoSpace, before anything
//     changed, when n more bytes cannot be stored, and the request is
//     answered with an error instead of being half-done.
//   - Append(recs) with the acceptor's records, under the engine's lock.
//     It only encodes them into memory (no system call, no allocation in
//     steady state) and returns the log position after them.
//   - Sync() from the engine's sync goroutine. It writes everything
//     appended so far and fsyncs once for all of it (group commit),
//     returning the durable position; the engine releases each reply once
//     that position covers the records the reply depends on. Appends made
//     while an fsync runs land in the next batch; Append never waits for
//     an fsync. A failed Sync makes the log unusable (ErrFailed).
//
// Trimmed segments leave garbage. When ShouldCompact(acc.LiveBytes())
// says so, the engine calls Compact(acc.Snapshot) under its lock: the
// snapshot becomes the head of a new generation file, later Appends go
// there, and the next Sync makes it durable and removes the old
// generation. Stats reports sizes, counts and the last fsync's duration.
//
// # On-disk format
//
// A data directory holds:
//
//	LOCK                 flock(2)ed by the open Log (ErrLocked otherwise)
//	IDENTITY             text: magic line, format version, cluster, segment
//	                     size, creation time, CRC32C of the lines above;
//	                     written atomically (temp file, fsync, rename, dir fsync)
//	gen-<16 hex>.log     one generation of the log (normally exactly one)
//
// Any other file makes Open refuse the directory (ErrForeign), except
// IDENTITY.tmp, the debris of a crash while writing IDENTITY.
//
// A generation file is a sequence of frames, then zeros up to its
// preallocated size (files grow by fallocate(2) in Options.ChunkSize
// chunks, so that writes into them cannot fail for lack of space; syncs
// write zeros over the next Options.ZeroAhead bytes of that space, so
// that later syncs find it written and have no metadata to write). A
// frame is
//
//	crc32c u32 | n u32 | payload [n]byte    (little endian; CRC32C over n and payload)
//
// and the payload's first byte is its kind:
//
//	0x10 header  magic "WORMGEN\0" | version u32 | generation u64 |
//	             base u64 | segment size u32 | cluster len u16 | cluster
//	1..5 record  the paxos.RecordKind | seg u64 | off u32 | round u64 |
//	             node u64 | value (the rest of the payload)
//	0x11 commit  flags u8 | batch u64 | end u64
//
// A generation starts with its header, then the snapshot records that
// rebuild the state it starts from (none for a new directory), then a
// commit of batch 1 flagged "snapshot". Each Sync then writes the records
// appended since the previous one followed by a commit of the next batch
// number. A log position is base + file offset: positions grow across
// generations and restarts. A commit records the position after itself,
// so a commit copied to the wrong place does not validate.
//
// # Crash recovery
//
// Open replays the newest generation whose snapshot commit is intact into
// a new acceptor, frame by frame, until it meets the first frame that is
// not intact (zero or out-of-range length, checksum mismatch, or running
// past the end of the file). What follows decides between a torn tail
// and corruption:
//
//  1. Only zeros follow: this is the clean end of the log (the
//     preallocated tail was never written).
//  2. No batch is written before the batch it follows is durable: Syncs
//     are serialised and each writes its batch and fsyncs before the next
//     batch is written; the first Sync into a generation a compaction
//     wrote fsyncs its snapshot (batch 1) before writing batch 2; Open
//     fsyncs what it recovered before it writes a repair commit. So when
//     a crash interrupts the write of batch b+1 (b being the last intact
//     commit), nothing of batch b+2 or later can be on disk. Open searches every byte offset after the
//     damage for an intact commit of batch >= b+2. If it finds one, batch
//     b+1 was synced before that commit was written: the damage is
//     corruption, and Open fails with a *CorruptError naming the file and
//     offset (ErrCorrupt). It never serves data past damage.
//  3. Otherwise the damage lies in the last batch, which a crash may have
//     torn (a partial write, or pages of it lost in a power failure,
//     which read back as zeros from preallocated space). The tail is cut
//     (truncated) at the damage; intact records before it are kept, a
//     commit is written after them and fsynced before Open returns.
//
// Open makes everything it recovered durable before it returns (fsync of
// the generation and of the directory), even when nothing needed repair:
// after a process crash the page cache can hold writes that never reached
// the device (a Sync killed between its write and its fsync, a
// compaction's new generation), and the acceptor will answer from them.
//
// Intact frames that make no sense (a commit out of sequence or at the
// wrong position, an unknown kind, a record Apply refuses) are corruption
// wherever they are: a crash tears frames, it does not forge them.
//
// The recovered state is therefore the state after a prefix of the
// appended records that contains every record a successful Sync covered
// and everything an earlier Open recovered.
// One limit: damage confined to the last batch is indistinguishable from
// a torn write, so a bit flip there is cut (and logged) rather than
// reported.
//
// Compaction writes generation g+1 (header, snapshot, snapshot commit)
// without fsync while the engine holds its lock, then switches Appends to
// it. Until the next Sync fsyncs g+1 and the directory, g+1's snapshot
// commit may be missing after a crash; Open then discards g+1 and
// recovers g, which holds everything any Sync reported (records appended
// to g but not synced are dropped by the switch; their effects are in the
// snapshot, and their positions are covered only by g+1's first Sync).
// Once g+1 is durable it is the newest complete generation and g is
// removed; a crash before the removal (or before the directory's next
// fsync made it durable) leaves both, and Open removes g, after fsyncing
// g+1 (a process crash may have left g+1 complete in the page cache only)
// and before any repair of g+1 that may need the room g holds.
//
// A new directory is initialised by writing generation 1 (with an empty
// snapshot) and fsyncing it before writing IDENTITY, then fsyncing the
// parent directory (the data directory's own name), so a directory
// without IDENTITY never acknowledged anything; Open finishes such an
// interrupted initialisation only when generation 1 is all it holds and
// it is empty, and otherwise refuses.
//
// With Options.Volatile, Sync skips fsync: a process crash loses nothing
// Sync reported, a power failure may, and may leave damage Open reports
// as corruption.
//
// # File system
//
// The log reaches its directory only through an FS (Options.FS): OSFS,
// the default, is the operating system's (fdatasync, fallocate, flock);
// worm/storage/simfs is a simulated disk that loses unsynced writes and
// directory changes at a crash as a real one may, so that the simulator
// (worm/sim) runs this very code through seeded power failures. FS states
// the durability contract the argument above relies on.
//
// The argument above was checked, and its gaps found, by running this code
// over simfs through seeded crashes at every operation (TestSimDisk here,
// and worm/sim with a whole cluster): a Sync killed before its fsync and a
// power failure after the restart lost state the restarted acceptor had
// answered from; a compaction's generation that became durable only in
// the page cache lost the older one it replaced; a fresh generation's
// first batch could reach the disk without its snapshot, which recovery
// then took for corruption; and on a full disk, a generation a crash
// brought back kept Open from finding room for its repair commit.
//
// This package imports only the standard library, golang.org/x/sys/unix,
// worm and worm/paxos. It must never import worm/server, worm/client or
// worm/wire.
package storage
