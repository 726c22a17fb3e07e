// make_dataset: the recipe's data section -> a Dataset (keys documented in
// include/strata/data/dataset.h).
#include "strata/data/dataset.h"

#include "strata/config/config.h"
#include "strata/core/error.h"
#include "strata/data/corpus.h"
#include "strata/data/fashion_mnist.h"
#include "strata/data/synthetic.h"

namespace strata::data {

const char* split_name(Split split) { return split == Split::Train ? "train" : "val"; }

Split parse_split(const std::string& name) {
  if (name == "train") return Split::Train;
  if (name == "val" || name == "validation" || name == "test") return Split::Val;
  STRATA_FAIL("unknown data split '{}' (expected train or val)", name);
}

std::shared_ptr<const Dataset> make_dataset(const config::Config& config, const std::string& section, Split split) {
  auto key = [&](const char* name) { return section + "." + name; };
  const std::string name =
      config.get_choice(key("name"), {"bible_kjv", "text", "fashion_mnist", "selective_copying", "induction_heads",
                                      "mqar", "passkey", "joint_recall"});

  if (name == "bible_kjv" || name == "text") {
    const int64_t seq_len = config.get_positive<int64_t>(key("seq_len"));
    const std::string folder = name == "bible_kjv" ? config.get<std::string>(key("path"), "data/generated/bible_kjv")
                                                   : config.get<std::string>(key("path"));
    return open_byte_corpus(folder, split, seq_len, name, "strata prepare " + name);
  }
  if (name == "fashion_mnist") {
    return open_fashion_mnist(config.get<std::string>(key("path"), kFashionMnistFolder), split);
  }

  // Synthetic tasks: both sizes are read whichever split is built, so a recipe that
  // sets val_examples is valid even in a run that never evaluates.
  const int64_t seq_len = config.get_positive<int64_t>(key("seq_len"));
  const uint64_t seed = static_cast<uint64_t>(config.get<int64_t>(key("seed"), 0));
  const int64_t train_examples = config.get_positive<int64_t>(key("train_examples"), 100000);
  const int64_t val_examples = config.get_positive<int64_t>(key("val_examples"), 1000);
  const int64_t size = split == Split::Train ? train_examples : val_examples;
  const uint64_t stream = 2 * seed + (split == Split::Train ? 0 : 1);  // disjoint draws for train and val

  if (name == "selective_copying") {
    SelectiveCopyingOptions o;
    o.seq_len = seq_len;
    o.vocab_size = config.get_positive<int64_t>(key("vocab_size"), o.vocab_size);
    o.num_tokens = config.get_positive<int64_t>(key("num_tokens"), o.num_tokens);
    return make_selective_copying(o, stream, size);
  }
  if (name == "induction_heads") {
    InductionHeadsOptions o;
    o.seq_len = seq_len;
    o.vocab_size = config.get_positive<int64_t>(key("vocab_size"), o.vocab_size);
    return make_induction_heads(o, stream, size);
  }
  if (name == "mqar") {
    MqarOptions o;
    o.seq_len = seq_len;
    o.vocab_size = config.get_positive<int64_t>(key("vocab_size"), o.vocab_size);
    o.num_kv_pairs = config.get_positive<int64_t>(key("num_kv_pairs"), o.num_kv_pairs);
    o.power_a = config.get_positive<double>(key("power_a"), o.power_a);
    return make_mqar(o, stream, size);
  }
  if (name == "passkey") {
    PasskeyOptions o;
    o.seq_len = seq_len;
    o.digits = config.get_in_range<int64_t>(key("digits"), 1, 18, o.digits);
    o.depth = config.get_in_range<double>(key("depth"), 0.0, 1.0, o.depth);
    return make_passkey(o, stream, size);
  }
  JointRecallOptions o;
  o.seq_len = seq_len;
  o.vocab_size = config.get_positive<int64_t>(key("vocab_size"), o.vocab_size);
  o.num_contexts = config.get_positive<int64_t>(key("num_contexts"), o.num_contexts);
  o.num_keys = config.get_positive<int64_t>(key("num_keys"), o.num_keys);
  o.num_queries = config.get_positive<int64_t>(key("num_queries"), o.num_contexts * o.num_keys);
  return make_joint_recall(o, stream, size);
}

}  // namespace strata::data
