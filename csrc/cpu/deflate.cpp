// deflate_fast: raw DEFLATE (RFC 1951) of a byte string with Huffman codes of its own statistics and runs
// of one repeated byte (matches at distance 1), no other LZ77 matching: the fast level of our PNG writer
// (lowlight_fast/png.py, level 1). PNG rows filtered by Sub are nearly memoryless (differences of
// neighbouring samples), so almost all that deflate gains on them is the entropy coding: a Huffman-only
// stream is as small as zlib's level 6 on photographs and smaller than its level 1 (whose greedy matches
// of 3-4 bytes cost more bits than the literals they replace), at a fraction of the time
// (benchmarks/RESULTS.md, "our PNG encoder"). Runs (flat or clipped regions, letterboxes) are coded as
// length/distance-1 pairs from RUN_MIN bytes on.
//
// The input is cut into blocks of BLOCK bytes, each with its own dynamic Huffman codes (code lengths at
// most 15, the code-length code at most 7, limited as miniz does); a block that would not be smaller
// than its bytes is stored. `last` = false ends the output on a byte boundary with an empty stored block
// (what zlib's Z_SYNC_FLUSH writes), so pieces deflated separately concatenate into one stream; `last` =
// true sets BFINAL on the last block. The bytes depend only on the input and `last`.
// Single-threaded: the PNG writer runs one call per piece in its own threads.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/checks.h"

namespace lowlight_fast {
namespace deflate {
namespace {

constexpr int64_t BLOCK = 1 << 17;  // input bytes per Huffman block
constexpr int RUN_MIN = 8;  // shortest run of one byte coded as a match (deflate allows 3; 8 = one word compare)
constexpr int MAX_MATCH = 258;
constexpr int NUM_LIT = 286;  // literal/length alphabet in use (0-255, end of block 256, lengths 257-285)
constexpr int NUM_DIST = 2;   // distance codes written: 0 (distance 1) and a dummy 1, so the code is complete
constexpr int NUM_CL = 19;
constexpr int END_BLOCK = 256;

// length 3..258 -> (symbol, extra bits, extra value)
struct LengthCode {
  uint16_t symbol;
  uint8_t extra_bits;
  uint16_t extra;
};

const LengthCode* length_table() {
  static const std::vector<LengthCode> table = [] {
    static const int base[29] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
                                 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
    static const int bits[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
                                 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
    std::vector<LengthCode> t(MAX_MATCH + 1, LengthCode{0, 0, 0});
    for (int len = 3; len <= MAX_MATCH; ++len) {
      int c = 28;
      if (len < 258) {
        c = 0;
        while (c + 1 < 28 && base[c + 1] <= len) ++c;
      }
      t[len] = LengthCode{static_cast<uint16_t>(257 + c), static_cast<uint8_t>(bits[c]),
                          static_cast<uint16_t>(len - base[c])};
    }
    return t;
  }();
  return table.data();
}

// LSB-first bit writer into a buffer of known capacity (the output tensor, sized for the worst case);
// put() stores 8 bytes at a time, branch-free, hence 16 bytes of slack (checked by reserve())
class BitWriter {
 public:
  BitWriter(uint8_t* out, size_t capacity) : out_(out), capacity_(capacity) {}
  void reserve(size_t bytes) const {
    TORCH_CHECK(pos_ + bytes + 16 <= capacity_, "deflate_fast: internal error: output bound exceeded");
  }
  inline void put(uint32_t bits, int n) {  // n + 7 <= 57
    acc_ |= static_cast<uint64_t>(bits) << count_;
    count_ += n;
    std::memcpy(out_ + pos_, &acc_, 8);  // little-endian: the low bytes first
    const int whole = count_ >> 3;
    pos_ += whole;
    acc_ >>= whole * 8;  // whole <= 7
    count_ &= 7;
  }
  void align() {  // to a byte boundary with zero bits
    if (count_) {
      reserve(1);
      out_[pos_++] = static_cast<uint8_t>(acc_ & 0xFF);
    }
    acc_ = 0;
    count_ = 0;
  }
  void bytes(const uint8_t* p, size_t n) {  // after align()
    reserve(n);
    std::memcpy(out_ + pos_, p, n);
    pos_ += n;
  }
  size_t size() const { return pos_; }
  // fn(acc, count, out): writes with the writer's state in locals (reserve() first)
  template <typename Fn>
  void flush_tokens(Fn&& fn) {
    uint64_t acc = acc_;
    int count = count_;
    uint8_t* out = out_ + pos_;
    fn(acc, count, out);
    acc_ = acc;
    count_ = count;
    pos_ = static_cast<size_t>(out - out_);
  }

 private:
  uint8_t* out_;
  size_t capacity_;
  size_t pos_ = 0;
  uint64_t acc_ = 0;
  int count_ = 0;
};

// Code lengths (at most max_bits) of a Huffman code for freq; at least two symbols get a length.
void huffman_lengths(const uint32_t* freq, int n, int max_bits, uint8_t* lengths) {
  std::fill(lengths, lengths + n, 0);
  std::vector<std::pair<uint32_t, int>> used;  // (freq, symbol), ascending
  for (int i = 0; i < n; ++i)
    if (freq[i]) used.emplace_back(freq[i], i);
  for (int i = 0; used.size() < 2; ++i) {  // a complete code needs two symbols: add unused ones
    if (!freq[i]) used.emplace_back(1u, i);
  }
  std::sort(used.begin(), used.end());
  const int m = static_cast<int>(used.size());
  // two-queue Huffman construction: leaves 0..m-1 (ascending), internal nodes m..2m-2 in creation order
  std::vector<uint64_t> weight(2 * m - 1);
  std::vector<int> parent(2 * m - 1, -1);
  for (int i = 0; i < m; ++i) weight[i] = used[i].first;
  int leaf = 0, node = m, next = m;
  auto take = [&]() {
    if (leaf < m && (node >= next || weight[leaf] <= weight[node])) return leaf++;
    return node++;
  };
  for (; next < 2 * m - 1; ++next) {
    const int a = take(), b = take();
    weight[next] = weight[a] + weight[b];
    parent[a] = parent[b] = next;
  }
  std::vector<int> depth(2 * m - 1, 0);
  for (int i = 2 * m - 3; i >= 0; --i) depth[i] = depth[parent[i]] + 1;
  // count leaves per depth, limit to max_bits (miniz's tdefl_huffman_enforce_max_code_size)
  std::vector<int> count(std::max(max_bits, 64) + 1, 0);
  for (int i = 0; i < m; ++i) count[std::min(depth[i], 64)]++;
  for (int d = max_bits + 1; d < static_cast<int>(count.size()); ++d) {
    count[max_bits] += count[d];
    count[d] = 0;
  }
  uint64_t total = 0;
  for (int d = max_bits; d > 0; --d) total += static_cast<uint64_t>(count[d]) << (max_bits - d);
  while (total != (1ull << max_bits)) {
    count[max_bits]--;
    for (int d = max_bits - 1; d > 0; --d) {
      if (count[d]) {
        count[d]--;
        count[d + 1] += 2;
        break;
      }
    }
    total--;
  }
  // the most frequent symbols get the shortest codes
  int sym = m - 1;
  for (int d = 1; d <= max_bits; ++d) {
    for (int k = 0; k < count[d]; ++k) lengths[used[sym--].second] = static_cast<uint8_t>(d);
  }
}

// canonical codes, bit-reversed for LSB-first output
void canonical_codes(const uint8_t* lengths, int n, uint16_t* codes) {
  int bl_count[16] = {0};
  for (int i = 0; i < n; ++i) bl_count[lengths[i]]++;
  bl_count[0] = 0;
  int next_code[16] = {0};
  int code = 0;
  for (int bits = 1; bits < 16; ++bits) {
    code = (code + bl_count[bits - 1]) << 1;
    next_code[bits] = code;
  }
  for (int i = 0; i < n; ++i) {
    const int len = lengths[i];
    if (!len) {
      codes[i] = 0;
      continue;
    }
    uint32_t c = static_cast<uint32_t>(next_code[len]++), r = 0;
    for (int b = 0; b < len; ++b) {
      r = (r << 1) | (c & 1);
      c >>= 1;
    }
    codes[i] = static_cast<uint16_t>(r);
  }
}

struct ClToken {
  uint8_t symbol, extra;
};

// run-length coding of the concatenated code lengths with symbols 16 (repeat previous 3-6), 17 (zeros
// 3-10) and 18 (zeros 11-138)
std::vector<ClToken> code_length_tokens(const uint8_t* lens, int n) {
  std::vector<ClToken> out;
  int i = 0;
  while (i < n) {
    const uint8_t v = lens[i];
    int run = 1;
    while (i + run < n && lens[i + run] == v) ++run;
    i += run;
    if (v == 0) {
      while (run >= 11) {
        const int r = std::min(run, 138);
        out.push_back({18, static_cast<uint8_t>(r - 11)});
        run -= r;
      }
      if (run >= 3) {
        out.push_back({17, static_cast<uint8_t>(run - 3)});
        run = 0;
      }
      for (; run > 0; --run) out.push_back({0, 0});
    } else {
      out.push_back({v, 0});
      --run;
      while (run >= 3) {
        const int r = std::min(run, 6);
        out.push_back({16, static_cast<uint8_t>(r - 3)});
        run -= r;
      }
      for (; run > 0; --run) out.push_back({v, 0});
    }
  }
  return out;
}

void stored_blocks(BitWriter& w, const uint8_t* p, int64_t n, bool final_block) {
  do {
    const int64_t k = std::min<int64_t>(n, 65535);
    n -= k;
    w.reserve(8);
    w.put(final_block && n == 0 ? 1 : 0, 1);
    w.put(0, 2);
    w.align();
    const uint8_t hdr[4] = {static_cast<uint8_t>(k & 0xFF), static_cast<uint8_t>(k >> 8),
                            static_cast<uint8_t>(~k & 0xFF), static_cast<uint8_t>((~k >> 8) & 0xFF)};
    w.bytes(hdr, 4);
    w.bytes(p, static_cast<size_t>(k));
    p += k;
  } while (n > 0);
}

// one block: tokens (literal or length symbol | run << 9), then dynamic Huffman or stored
void encode_block(BitWriter& w, const uint8_t* p, int64_t n, bool final_block, std::vector<uint32_t>& tokens) {
  const LengthCode* lt = length_table();
  uint32_t freq[NUM_LIT] = {0};
  tokens.resize(static_cast<size_t>(std::max<int64_t>(n, 1)));
  uint32_t* tok = tokens.data();  // a raw pointer and locals: stores through it cannot alias the counters
  int64_t nt = 0, i = 0;
  uint64_t match_extra = 0;  // bits of the matches beyond their length symbol
  uint32_t hist[4][256] = {};
  if (n > 0) {  // the first byte of a block is a literal (runs copy the byte before them)
    tok[nt++] = p[0];
    freq[p[0]]++;
    i = 1;
  }
  while (i < n) {
    const uint8_t v = p[i];
    uint64_t next8;
    if (i + RUN_MIN <= n && (std::memcpy(&next8, p + i, 8), next8 == p[i - 1] * 0x0101010101010101ull)) {
      int64_t run = RUN_MIN;  // the 8 bytes from i equal the byte before them
      const int64_t limit = std::min<int64_t>(n - i, MAX_MATCH);
      while (run < limit && p[i + run] == v) ++run;
      tok[nt++] = lt[run].symbol | (static_cast<uint32_t>(run) << 9);
      freq[lt[run].symbol]++;
      match_extra += lt[run].extra_bits + 1u;  // + the distance code (1 bit)
      i += run;
      continue;
    }
    hist[nt & 3][v]++;  // four tables: repeated bytes do not wait on one counter
    tok[nt++] = v;
    ++i;
  }
  for (int k = 0; k < 256; ++k) freq[k] += hist[0][k] + hist[1][k] + hist[2][k] + hist[3][k];
  tokens.resize(static_cast<size_t>(nt));
  freq[END_BLOCK] = 1;

  uint8_t lit_len[NUM_LIT];
  uint16_t lit_code[NUM_LIT];
  huffman_lengths(freq, NUM_LIT, 15, lit_len);
  canonical_codes(lit_len, NUM_LIT, lit_code);
  const uint8_t dist_len[NUM_DIST] = {1, 1};
  uint16_t dist_code[NUM_DIST];
  canonical_codes(dist_len, NUM_DIST, dist_code);

  int hlit = NUM_LIT;
  while (hlit > 257 && lit_len[hlit - 1] == 0) --hlit;
  std::vector<uint8_t> all(lit_len, lit_len + hlit);
  all.insert(all.end(), dist_len, dist_len + NUM_DIST);
  const std::vector<ClToken> cl_tokens = code_length_tokens(all.data(), static_cast<int>(all.size()));
  uint32_t cl_freq[NUM_CL] = {0};
  for (const ClToken& t : cl_tokens) cl_freq[t.symbol]++;
  uint8_t cl_len[NUM_CL];
  uint16_t cl_code[NUM_CL];
  huffman_lengths(cl_freq, NUM_CL, 7, cl_len);
  canonical_codes(cl_len, NUM_CL, cl_code);
  static const uint8_t order[NUM_CL] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
  int hclen = NUM_CL;
  while (hclen > 4 && cl_len[order[hclen - 1]] == 0) --hclen;

  // size in bits, against a stored block
  static const uint8_t cl_extra[NUM_CL] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 3, 7};
  uint64_t bits = 3 + 5 + 5 + 4 + 3 * static_cast<uint64_t>(hclen);
  for (const ClToken& t : cl_tokens) bits += cl_len[t.symbol] + cl_extra[t.symbol];
  for (int s = 0; s < NUM_LIT; ++s) bits += static_cast<uint64_t>(lit_len[s]) * freq[s];
  bits += match_extra;  // the matches' extra length bits and distance codes
  const uint64_t stored_bits = static_cast<uint64_t>(n) * 8 + 40 * ((n + 65534) / 65535 + 1);
  if (bits >= stored_bits) {
    stored_blocks(w, p, n, final_block);
    return;
  }

  w.reserve(static_cast<size_t>(bits / 8 + 16));
  w.put(final_block ? 1 : 0, 1);
  w.put(2, 2);  // dynamic Huffman
  w.put(static_cast<uint32_t>(hlit - 257), 5);
  w.put(static_cast<uint32_t>(NUM_DIST - 1), 5);
  w.put(static_cast<uint32_t>(hclen - 4), 4);
  for (int k = 0; k < hclen; ++k) w.put(cl_len[order[k]], 3);
  for (const ClToken& t : cl_tokens) {
    w.put(cl_code[t.symbol], cl_len[t.symbol]);
    if (cl_extra[t.symbol]) w.put(t.extra, cl_extra[t.symbol]);
  }
  // literals: code and length in one word (code << 8 | length), read once per token
  uint32_t lit_word[NUM_LIT];
  for (int k = 0; k < NUM_LIT; ++k) lit_word[k] = (static_cast<uint32_t>(lit_code[k]) << 8) | lit_len[k];
  w.flush_tokens([&](uint64_t& acc, int& count, uint8_t*& out) {
    const uint32_t dist_bits = dist_code[0], dist_n = dist_len[0];
    for (int64_t k = 0; k < nt; ++k) {
      const uint32_t t = tok[k], sym = t & 0x1FF, word = lit_word[sym];
      uint64_t bits = word >> 8;
      int nbits = static_cast<int>(word & 0xFF);
      if (sym > END_BLOCK) {
        const LengthCode& lc = lt[t >> 9];
        bits |= static_cast<uint64_t>(lc.extra) << nbits;
        nbits += lc.extra_bits;
        bits |= static_cast<uint64_t>(dist_bits) << nbits;
        nbits += static_cast<int>(dist_n);
      }
      acc |= bits << count;
      count += nbits;
      std::memcpy(out, &acc, 8);
      const int whole = count >> 3;
      out += whole;
      acc >>= whole * 8;
      count &= 7;
    }
  });
  w.put(lit_code[END_BLOCK], lit_len[END_BLOCK]);
}

at::Tensor deflate_fast_cpu(const at::Tensor& data_in, bool last) {
  const char* op = "deflate_fast";
  TORCH_CHECK(data_in.dim() == 1, op, ": data must be a 1-D tensor of bytes, got shape ", data_in.sizes());
  TORCH_CHECK(data_in.scalar_type() == at::kByte, op, ": data must be uint8, got ", data_in.scalar_type());
  check::device(op, data_in, "data", at::kCPU);
  const at::Tensor data = data_in.contiguous();
  const uint8_t* p = data.const_data_ptr<uint8_t>();
  const int64_t n = data.numel();
  // the worst case: every block stored (5 bytes a 65535-byte piece), block and flush headers, slack
  const int64_t bound = n + n / 1024 + 128;
  at::Tensor result = at::empty({bound}, data.options());
  BitWriter w(result.mutable_data_ptr<uint8_t>(), static_cast<size_t>(bound));
  std::vector<uint32_t> tokens;
  tokens.reserve(static_cast<size_t>(std::min<int64_t>(n, BLOCK)));
  if (n == 0) {
    stored_blocks(w, p, 0, last);
  }
  for (int64_t start = 0; start < n; start += BLOCK) {
    const int64_t k = std::min<int64_t>(BLOCK, n - start);
    encode_block(w, p + start, k, last && start + k == n, tokens);
  }
  if (!last && n > 0) stored_blocks(w, p, 0, false);  // byte-aligned end, as Z_SYNC_FLUSH
  w.align();
  result = result.narrow(0, 0, static_cast<int64_t>(w.size()));
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(lowlight_fast, CPU, m) {
  m.impl("deflate_fast", &deflate_fast_cpu);
}

}  // namespace deflate
}  // namespace lowlight_fast
