// Synthetic sequence tasks that probe what a sequence model can remember and
// retrieve. Each example is a pair (inputs, targets) of length seq_len; targets[t]
// is what the model should output at position t (after reading inputs[0..t]) and
// is kIgnoreIndex where nothing is scored.
//
// Randomness: example i of a task drawn with seed s uses Philox4x32-10 keyed by s,
// from counter i * 2^32 on (src/data/random.h). An example depends only on
// (options, seed, index): the same on every machine, thread and run.
#pragma once

#include <cstdint>
#include <memory>

#include "strata/data/dataset.h"

namespace strata::data {

// Selective copying (Gu & Dao, Mamba, 2023, sec. 4.1.1): num_tokens data tokens are
// scattered at random positions among blanks; then come num_tokens markers, and
// at the k-th marker the model must output the k-th data token.
//   vocabulary: 0 = blank, 1 .. vocab_size-2 = data tokens, vocab_size-1 = marker
//   inputs:  [ blanks with the data tokens at random positions (seq_len - num_tokens) | markers (num_tokens) ]
//   targets: kIgnoreIndex, then the data tokens in order of appearance at the markers
struct SelectiveCopyingOptions {
  int64_t seq_len = 4096;
  int64_t vocab_size = 18;  // 16 data tokens, as in the paper
  int64_t num_tokens = 16;
};
Example selective_copying_example(const SelectiveCopyingOptions& options, uint64_t seed, int64_t index);

// Induction heads (Olsson et al., 2022; the H3 and Mamba synthetic): random tokens
// in which a trigger token appears once, followed by some token x; the sequence
// ends with the trigger again and the model must output x there.
//   vocabulary: 0 .. vocab_size-2 = ordinary tokens, vocab_size-1 = trigger
//   targets: kIgnoreIndex except at the last position: x
struct InductionHeadsOptions {
  int64_t seq_len = 256;
  int64_t vocab_size = 16;
};
Example induction_heads_example(const InductionHeadsOptions& options, uint64_t seed, int64_t index);

// Multi-query associative recall (Arora et al., Zoology, 2023): num_kv_pairs
// key-value pairs, then each key queried once later in the sequence, at even
// offsets after the pairs whose gaps follow a power law (p(gap) ∝ gap^(power_a-1),
// as in Zoology: most queries come soon after the pairs, some far away).
//   vocabulary: 0 = blank, keys 1 .. vocab_size/2 - 1, values vocab_size/2 .. vocab_size-1
//   inputs:  k1 v1 k2 v2 ... kP vP | blanks with the queried keys at chosen even offsets
//   targets: at each queried key, its value; kIgnoreIndex elsewhere
struct MqarOptions {
  int64_t seq_len = 256;
  int64_t vocab_size = 8192;
  int64_t num_kv_pairs = 8;
  double power_a = 0.01;
};
Example mqar_example(const MqarOptions& options, uint64_t seed, int64_t index);

// Passkey retrieval (Mohtashami & Jaggi, 2023), byte-level: a number of `digits`
// digits is hidden at relative `depth` of repetitive filler text and asked for at
// the end; the text is seq_len + 1 bytes, inputs = text[0, T), targets = text[1, T+1)
// but only the answer's digits are scored.
//   "There is important info hidden inside a lot of irrelevant text. Find it and
//    memorize it. I will quiz you about the important info there. <filler...> The
//    pass key is 71432. Remember it. 71432 is the pass key. <filler...> What is
//    the pass key? The pass key is 71432"
struct PasskeyOptions {
  int64_t seq_len = 1024;
  int64_t digits = 5;
  double depth = -1.0;  // in [0, 1]: where the key sits in the filler; negative: random for each example
};
Example passkey_example(const PasskeyOptions& options, uint64_t seed, int64_t index);

// Joint recall (Zhan et al., "Overcoming long-context limitations of state-space
// models via context-dependent sparse attention", 2025): associative recall where
// a key's value depends on the context it appears in. The table gives, for each of
// num_contexts contexts, a value for every one of num_keys keys; queries ask for
// (context, key) pairs, the whole table when num_queries = num_contexts * num_keys.
// Token layout (ours; the paper describes the task, not a fixed encoding):
//   vocabulary: 0 = blank, contexts 1 .. C, keys C+1 .. C+K, values C+K+1 .. vocab_size-1
//   inputs:  for each context (random order): c, then each key (random order) with its value: c k v k v ...
//            | blanks | num_queries queries "c k v" at the end
//   targets: at the key of each query, the value the table gave it in that context
struct JointRecallOptions {
  int64_t seq_len = 256;
  int64_t vocab_size = 64;
  int64_t num_contexts = 4;
  int64_t num_keys = 4;
  int64_t num_queries = 16;
};
Example joint_recall_example(const JointRecallOptions& options, uint64_t seed, int64_t index);

// A task as a Dataset of `size` examples drawn with `seed`.
std::shared_ptr<const Dataset> make_selective_copying(const SelectiveCopyingOptions& options, uint64_t seed,
                                                      int64_t size);
std::shared_ptr<const Dataset> make_induction_heads(const InductionHeadsOptions& options, uint64_t seed, int64_t size);
std::shared_ptr<const Dataset> make_mqar(const MqarOptions& options, uint64_t seed, int64_t size);
std::shared_ptr<const Dataset> make_passkey(const PasskeyOptions& options, uint64_t seed, int64_t size);
std::shared_ptr<const Dataset> make_joint_recall(const JointRecallOptions& options, uint64_t seed, int64_t size);

}  // namespace strata::data
