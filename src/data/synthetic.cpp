// The synthetic tasks of include/strata/data/synthetic.h. Each generator draws only
// from ExampleRandom(seed, index), in a fixed order, so an example is a pure
// function of (options, seed, index).
#include "strata/data/synthetic.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "data/random.h"
#include "strata/core/error.h"

namespace strata::data {

namespace {

Example empty_sequence(int64_t seq_len, int64_t fill) {
  Example example;
  example.inputs.assign(seq_len, fill);
  example.targets.assign(seq_len, kIgnoreIndex);
  return example;
}

void validate(const SelectiveCopyingOptions& o) {
  STRATA_CHECK(o.vocab_size >= 3, "selective_copying: vocab_size {} leaves no data token (blank and marker take 2)",
               o.vocab_size);
  STRATA_CHECK(o.num_tokens >= 1, "selective_copying: num_tokens must be positive, got {}", o.num_tokens);
  STRATA_CHECK(o.seq_len >= 2 * o.num_tokens,
               "selective_copying: seq_len {} is too short to scatter and recall {} tokens (needs at least {})",
               o.seq_len, o.num_tokens, 2 * o.num_tokens);
}

void validate(const InductionHeadsOptions& o) {
  STRATA_CHECK(o.vocab_size >= 3, "induction_heads: vocab_size must be at least 3, got {}", o.vocab_size);
  STRATA_CHECK(o.seq_len >= 4, "induction_heads: seq_len must be at least 4, got {}", o.seq_len);
}

int64_t mqar_query_slots(const MqarOptions& o) { return (o.seq_len - 2 * o.num_kv_pairs) / 2; }

void validate(const MqarOptions& o) {
  STRATA_CHECK(o.num_kv_pairs >= 1, "mqar: num_kv_pairs must be positive, got {}", o.num_kv_pairs);
  STRATA_CHECK(o.vocab_size / 2 - 1 >= o.num_kv_pairs,
               "mqar: vocab_size {} has {} key tokens, fewer than the {} distinct keys needed", o.vocab_size,
               std::max<int64_t>(o.vocab_size / 2 - 1, 0), o.num_kv_pairs);
  STRATA_CHECK(mqar_query_slots(o) >= o.num_kv_pairs,
               "mqar: seq_len {} is too short for {} pairs and their queries (needs at least {})", o.seq_len,
               o.num_kv_pairs, 4 * o.num_kv_pairs);
  STRATA_CHECK(o.power_a > 0, "mqar: power_a must be positive, got {}", o.power_a);
}

void validate(const PasskeyOptions& o) {
  STRATA_CHECK(o.digits >= 1 && o.digits <= 18, "passkey: digits must be in [1, 18], got {}", o.digits);
  STRATA_CHECK(o.depth <= 1.0, "passkey: depth must be in [0, 1] (or negative for random), got {}", o.depth);
}

int64_t joint_recall_table_length(const JointRecallOptions& o) { return o.num_contexts * (1 + 2 * o.num_keys); }

void validate(const JointRecallOptions& o) {
  STRATA_CHECK(o.num_contexts >= 1 && o.num_keys >= 1, "joint_recall: num_contexts and num_keys must be positive");
  STRATA_CHECK(o.vocab_size >= o.num_contexts + o.num_keys + 2,
               "joint_recall: vocab_size {} leaves no value token after the blank, {} contexts and {} keys",
               o.vocab_size, o.num_contexts, o.num_keys);
  STRATA_CHECK(o.num_queries >= 1 && o.num_queries <= o.num_contexts * o.num_keys,
               "joint_recall: num_queries must be in [1, {}] (the table's size), got {}", o.num_contexts * o.num_keys,
               o.num_queries);
  int64_t needed = joint_recall_table_length(o) + 3 * o.num_queries;
  STRATA_CHECK(o.seq_len >= needed, "joint_recall: seq_len {} is too short for the table and queries (needs {})",
               o.seq_len, needed);
}

}  // namespace

Example selective_copying_example(const SelectiveCopyingOptions& o, uint64_t seed, int64_t index) {
  validate(o);
  ExampleRandom random(seed, index);
  const int64_t scatter_length = o.seq_len - o.num_tokens;
  std::vector<int64_t> positions = random.distinct(o.num_tokens, scatter_length);
  std::sort(positions.begin(), positions.end());
  Example example = empty_sequence(o.seq_len, 0);
  const int64_t marker = o.vocab_size - 1;
  for (int64_t k = 0; k < o.num_tokens; ++k) {
    int64_t token = 1 + random.uniform(o.vocab_size - 2);
    example.inputs[positions[k]] = token;
    example.inputs[scatter_length + k] = marker;
    example.targets[scatter_length + k] = token;
  }
  return example;
}

Example induction_heads_example(const InductionHeadsOptions& o, uint64_t seed, int64_t index) {
  validate(o);
  ExampleRandom random(seed, index);
  const int64_t trigger = o.vocab_size - 1;
  Example example = empty_sequence(o.seq_len, 0);
  for (int64_t& token : example.inputs) token = random.uniform(o.vocab_size - 1);
  // The first trigger leaves room for its successor before the final trigger.
  int64_t first = random.uniform(o.seq_len - 2);
  example.inputs[first] = trigger;
  example.inputs[o.seq_len - 1] = trigger;
  example.targets[o.seq_len - 1] = example.inputs[first + 1];
  return example;
}

Example mqar_example(const MqarOptions& o, uint64_t seed, int64_t index) {
  validate(o);
  ExampleRandom random(seed, index);
  const int64_t pairs = o.num_kv_pairs, first_value = o.vocab_size / 2;
  std::vector<int64_t> keys = random.distinct(pairs, first_value - 1);
  std::vector<int64_t> values(pairs);
  Example example = empty_sequence(o.seq_len, 0);
  for (int64_t i = 0; i < pairs; ++i) {
    keys[i] += 1;
    values[i] = first_value + random.uniform(o.vocab_size - first_value);
    example.inputs[2 * i] = keys[i];
    example.inputs[2 * i + 1] = values[i];
  }
  // Query slot s (position 2P + 2s) has weight (s + 1)^(a - 1); `pairs` distinct slots
  // are drawn by weighted sampling without replacement (Efraimidis & Spirakis:
  // keep the largest log(u) / weight).
  const int64_t slots = mqar_query_slots(o);
  std::vector<std::pair<double, int64_t>> scored(slots);
  for (int64_t s = 0; s < slots; ++s) {
    double u = (static_cast<double>(random.next_u64() >> 11) + 0.5) * 0x1.0p-53;  // in (0, 1)
    scored[s] = {std::log(u) / std::pow(static_cast<double>(s + 1), o.power_a - 1.0), s};
  }
  std::partial_sort(scored.begin(), scored.begin() + pairs, scored.end(), std::greater<>());
  std::vector<int64_t> chosen(pairs);
  for (int64_t i = 0; i < pairs; ++i) chosen[i] = scored[i].second;
  std::sort(chosen.begin(), chosen.end());
  std::vector<int64_t> query_order(pairs);
  std::iota(query_order.begin(), query_order.end(), 0);
  random.shuffle(query_order);
  for (int64_t i = 0; i < pairs; ++i) {
    int64_t position = 2 * pairs + 2 * chosen[i];
    example.inputs[position] = keys[query_order[i]];
    example.targets[position] = values[query_order[i]];
  }
  return example;
}

Example passkey_example(const PasskeyOptions& o, uint64_t seed, int64_t index) {
  validate(o);
  static const std::string kHead =
      "There is important info hidden inside a lot of irrelevant text. Find it and memorize it. "
      "I will quiz you about the important info there.";
  static const std::vector<std::string> kFiller{" The grass is green.", " The sky is blue.", " The sun is yellow.",
                                                " Here we go.", " There and back again."};
  ExampleRandom random(seed, index);
  std::string key(1, static_cast<char>('1' + random.uniform(9)));
  for (int64_t i = 1; i < o.digits; ++i) key += static_cast<char>('0' + random.uniform(10));
  const double depth = o.depth >= 0 ? o.depth : random.unit();

  const std::string needle = " The pass key is " + key + ". Remember it. " + key + " is the pass key.";
  const std::string question = " What is the pass key? The pass key is " + key;
  const int64_t text_length = o.seq_len + 1;
  const int64_t fixed = static_cast<int64_t>(kHead.size() + needle.size() + question.size());
  STRATA_CHECK(text_length >= fixed, "passkey: seq_len {} is too short: the prompt alone needs {} bytes", o.seq_len,
               fixed - 1);

  // The filler repeats its sentences up to the length left; the key goes at the
  // sentence start nearest below `depth` of it.
  const int64_t filler_length = text_length - fixed;
  std::string filler;
  std::vector<int64_t> sentence_starts;
  for (size_t s = 0; static_cast<int64_t>(filler.size()) < filler_length; ++s) {
    sentence_starts.push_back(static_cast<int64_t>(filler.size()));
    filler += kFiller[s % kFiller.size()];
  }
  filler.resize(filler_length);
  sentence_starts.push_back(filler_length);  // depth 1: right before the question
  const int64_t target = std::llround(depth * static_cast<double>(filler_length));
  int64_t cut = 0;
  for (int64_t start : sentence_starts)
    if (start <= target) cut = start;

  const std::string text = kHead + filler.substr(0, cut) + needle + filler.substr(cut) + question;
  Example example = empty_sequence(o.seq_len, 0);
  for (int64_t t = 0; t < o.seq_len; ++t) {
    example.inputs[t] = static_cast<unsigned char>(text[t]);
    if (t + 1 >= text_length - o.digits) example.targets[t] = static_cast<unsigned char>(text[t + 1]);
  }
  return example;
}

Example joint_recall_example(const JointRecallOptions& o, uint64_t seed, int64_t index) {
  validate(o);
  ExampleRandom random(seed, index);
  const int64_t contexts = o.num_contexts, keys = o.num_keys;
  const int64_t first_key = 1 + contexts, first_value = 1 + contexts + keys;
  std::vector<int64_t> table(contexts * keys);  // table[c * keys + k]: the value of key k in context c
  for (int64_t& value : table) value = first_value + random.uniform(o.vocab_size - first_value);

  Example example = empty_sequence(o.seq_len, 0);
  int64_t position = 0;
  std::vector<int64_t> context_order(contexts), key_order(keys);
  std::iota(context_order.begin(), context_order.end(), 0);
  std::iota(key_order.begin(), key_order.end(), 0);
  random.shuffle(context_order);
  for (int64_t c : context_order) {
    example.inputs[position++] = 1 + c;
    random.shuffle(key_order);
    for (int64_t k : key_order) {
      example.inputs[position++] = first_key + k;
      example.inputs[position++] = table[c * keys + k];
    }
  }
  std::vector<int64_t> queried(contexts * keys);
  std::iota(queried.begin(), queried.end(), 0);
  random.shuffle(queried);
  position = o.seq_len - 3 * o.num_queries;
  for (int64_t q = 0; q < o.num_queries; ++q) {
    int64_t c = queried[q] / keys, k = queried[q] % keys;
    example.inputs[position] = 1 + c;
    example.inputs[position + 1] = first_key + k;
    example.targets[position + 1] = table[queried[q]];
    example.inputs[position + 2] = table[queried[q]];
    position += 3;
  }
  return example;
}

// ---------------------------------------------------------------------------

namespace {

template <class Options>
class SyntheticDataset final : public Dataset {
 public:
  using Generate = Example (*)(const Options&, uint64_t, int64_t);
  SyntheticDataset(std::string name, Options options, uint64_t seed, int64_t size, int64_t vocabulary,
                   Generate generate)
      : name_(std::move(name)),
        options_(options),
        seed_(seed),
        size_(size),
        vocabulary_(vocabulary),
        generate_(generate) {
    validate(options_);
    STRATA_CHECK(size_ > 0, "{}: the number of examples must be positive, got {}", name_, size_);
  }

  int64_t size() const override { return size_; }
  Example example(int64_t index) const override {
    STRATA_CHECK(index >= 0 && index < size_, "{}: example {} out of range [0, {})", name_, index, size_);
    return generate_(options_, seed_, index);
  }
  ExampleShape example_shape() const override { return {{options_.seq_len}, DType::Int64, {options_.seq_len}}; }
  int64_t num_classes() const override { return vocabulary_; }
  std::string description() const override {
    return fmt::format("{}: {} examples of length {}, vocabulary {}, seed {}", name_, size_, options_.seq_len,
                       vocabulary_, seed_);
  }

 private:
  std::string name_;
  Options options_;
  uint64_t seed_;
  int64_t size_;
  int64_t vocabulary_;
  Generate generate_;
};

}  // namespace

std::shared_ptr<const Dataset> make_selective_copying(const SelectiveCopyingOptions& options, uint64_t seed,
                                                      int64_t size) {
  return std::make_shared<SyntheticDataset<SelectiveCopyingOptions>>("selective_copying", options, seed, size,
                                                                     options.vocab_size, selective_copying_example);
}
std::shared_ptr<const Dataset> make_induction_heads(const InductionHeadsOptions& options, uint64_t seed, int64_t size) {
  return std::make_shared<SyntheticDataset<InductionHeadsOptions>>("induction_heads", options, seed, size,
                                                                   options.vocab_size, induction_heads_example);
}
std::shared_ptr<const Dataset> make_mqar(const MqarOptions& options, uint64_t seed, int64_t size) {
  return std::make_shared<SyntheticDataset<MqarOptions>>("mqar", options, seed, size, options.vocab_size,
                                                         mqar_example);
}
std::shared_ptr<const Dataset> make_passkey(const PasskeyOptions& options, uint64_t seed, int64_t size) {
  return std::make_shared<SyntheticDataset<PasskeyOptions>>("passkey", options, seed, size, 256, passkey_example);
}
std::shared_ptr<const Dataset> make_joint_recall(const JointRecallOptions& options, uint64_t seed, int64_t size) {
  return std::make_shared<SyntheticDataset<JointRecallOptions>>("joint_recall", options, seed, size,
                                                                options.vocab_size, joint_recall_example);
}

}  // namespace strata::data
