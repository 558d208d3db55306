/* engine.native._native: the ring's record format, as engine/ring/_layout.py defines it.
 *
 * Record layout (little-endian, as RECORD_HEADER "<BBHII4x16s16sQ"): kind u8, flags u8,
 * project_len u16, payload_len u32, aux u32, 4 pad bytes, call_id 16, trace_id 16,
 * enqueue_ns u64; then project, payload, zero padding to a multiple of 8.
 */
#ifndef ENGINE_NATIVE_FORMAT_H
#define ENGINE_NATIVE_FORMAT_H

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "engine.native._native assumes a little-endian host (the ring format is little-endian)"
#endif

#define HEADER_BYTES 56
#define KIND_PAD 0
#define KIND_START 1
#define KIND_END 2
#define KIND_COMPLETE 3
#define KIND_SPLICED 16  /* never in a ring: a start and its end, parsed as one record */
#define KIND_RUN 17      /* never in a ring: adjacent complete calls, parsed as one record */
#define FLAG_END_HAS_TRACE 1

#endif
