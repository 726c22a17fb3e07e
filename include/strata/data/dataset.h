// Datasets: an indexable collection of examples, each produced on demand and
// deterministically from its index (so the loader can shard, shuffle, prefetch on
// another thread, and resume at any batch).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "strata/core/tensor.h"

namespace strata::config {
class Config;
}

namespace strata::data {

// Targets equal to kIgnoreIndex are not scored (the cross-entropy convention).
inline constexpr int64_t kIgnoreIndex = -100;

enum class Split { Train, Val };
const char* split_name(Split split);      // "train", "val"
Split parse_split(const std::string& name);  // "train", "val" (also "validation", "test")

// Sequence examples fill `inputs` and `targets` (length T each, targets[t] is what
// the model should output at position t). Image examples fill `pixels`
// (channels * height * width, in [0, 1]) and one class label in `targets`.
struct Example {
  std::vector<int64_t> inputs;
  std::vector<float> pixels;
  std::vector<int64_t> targets;
};

// The shape of one example, without the batch dimension.
struct ExampleShape {
  Shape inputs;                     // {T} or {1, 28, 28}
  DType input_dtype = DType::Int64;  // Int64 (token ids) or Float32 (pixels)
  Shape targets;                    // {T} or {} (one label)
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  // Deterministic in `index` and safe to call from several threads at once.
  virtual Example example(int64_t index) const = 0;
  virtual ExampleShape example_shape() const = 0;
  // The number of token ids (sequences: inputs and targets share one vocabulary)
  // or of class labels (images): the model's input and output size.
  virtual int64_t num_classes() const = 0;
  // One line for logs: "bible_kjv val: 440441 bytes, 3440 windows of 128".
  virtual std::string description() const = 0;
};

// Builds the dataset a recipe section describes. Keys (under `section`, e.g. data.):
//   name              bible_kjv | text | fashion_mnist | selective_copying |
//                     induction_heads | mqar | passkey | joint_recall
// Byte corpora (bible_kjv, text): 256 symbols, language modelling windows:
//   seq_len           T (required); inputs = bytes[o, o+T), targets = bytes[o+1, o+T+1)
//   path              folder holding train.bin, val.bin, meta.json
//                     (bible_kjv: data/generated/bible_kjv; text: required)
//   The train split offers a window at every byte offset (shuffled by the loader,
//   these are random offsets); the val split cuts the text into consecutive,
//   non-overlapping windows, so one pass reads it once.
// fashion_mnist: 28x28 grey images in [0, 1], 10 classes; val is the official test set.
//   path              default /usr/share/datasets/fashion-mnist (Debian dataset-fashion-mnist)
// Synthetic tasks (include/strata/data/synthetic.h documents each layout):
//   seq_len, vocab_size  (passkey has neither vocab_size: it is byte-level)
//   seed              default 0; train and val use different streams of it
//   train_examples    default 100000;  val_examples  default 1000
//   selective_copying: num_tokens (16)
//   mqar:              num_kv_pairs (8), power_a (0.01)
//   passkey:           digits (5), depth (in [0, 1]; absent: random for each example)
//   joint_recall:      num_contexts (4), num_keys (4), num_queries (num_contexts * num_keys)
std::shared_ptr<const Dataset> make_dataset(const config::Config& config, const std::string& section, Split split);

}  // namespace strata::data
