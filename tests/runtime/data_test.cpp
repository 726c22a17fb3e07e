// The data layer: corpus preparation (a small text and the real King James Bible),
// Fashion-MNIST reading and validation, the structure and determinism of every
// synthetic task, and the loader's sharding, reshuffling and exact resume.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>
#include <sstream>

#include "strata/config/config.h"
#include "strata/data/corpus.h"
#include "strata/data/fashion_mnist.h"
#include "strata/data/loader.h"
#include "strata/data/synthetic.h"
#include "support/check.h"
#include "support/temporary_folder.h"

using namespace strata;
using namespace strata::data;
namespace fs = std::filesystem;

namespace {

using testing::TemporaryFolder;

using testing::message_of;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

int64_t count_scored(const Example& e) {
  return std::count_if(e.targets.begin(), e.targets.end(), [](int64_t t) { return t != kIgnoreIndex; });
}

// Example i: inputs {i, 1000 + i}, targets {i, ignored}; throws at `poisoned`.
class NumberedDataset final : public Dataset {
 public:
  explicit NumberedDataset(int64_t size, int64_t poisoned = -1) : size_(size), poisoned_(poisoned) {}
  int64_t size() const override { return size_; }
  Example example(int64_t i) const override {
    if (i == poisoned_) STRATA_FAIL("example {} is unreadable", i);
    return Example{{i, 1000 + i}, {}, {i, kIgnoreIndex}};
  }
  ExampleShape example_shape() const override { return {{2}, DType::Int64, {2}}; }
  int64_t num_classes() const override { return 2000; }
  std::string description() const override { return fmt::format("numbered: {} examples", size_); }

 private:
  int64_t size_, poisoned_;
};

std::vector<int64_t> first_inputs(const Batch& batch) {
  std::vector<int64_t> values = batch.inputs.to_vector<int64_t>(), firsts;
  for (size_t i = 0; i < values.size(); i += 2) firsts.push_back(values[i]);
  return firsts;
}

// zlib reads a file that is not gzip-compressed as it is, so hand-made idx files
// need no compression.
void write_bytes(const fs::path& path, const std::vector<uint8_t>& bytes) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

std::vector<uint8_t> idx_header(uint32_t magic, std::vector<uint32_t> dims) {
  std::vector<uint8_t> bytes;
  dims.insert(dims.begin(), magic);
  for (uint32_t v : dims)
    for (int shift = 24; shift >= 0; shift -= 8) bytes.push_back(static_cast<uint8_t>(v >> shift));
  return bytes;
}

}  // namespace

// ---------------------------------------------------------------------------
// Byte corpora

TEST_CASE("a small text becomes train.bin, val.bin and meta.json, read as shifted windows") {
  TemporaryFolder folder("data-test-corpus");
  std::string text;
  for (int i = 0; i < 1000; ++i) text += static_cast<char>('a' + (i * 7) % 26);
  std::ofstream(folder.path / "input.txt", std::ios::binary) << text;
  const std::string out = (folder.path / "corpus").string();

  CorpusSummary summary = prepare_text_corpus((folder.path / "input.txt").string(), out, 0.1);
  CHECK(summary.train_bytes == 900);
  CHECK(summary.val_bytes == 100);
  CHECK(read_file(fs::path(out) / "train.bin") == text.substr(0, 900));
  CHECK(read_file(fs::path(out) / "val.bin") == text.substr(900));
  nlohmann::json meta = nlohmann::json::parse(read_file(fs::path(out) / "meta.json"));
  CHECK(meta["train_bytes"] == 900);
  CHECK(meta["val_bytes"] == 100);
  CHECK(meta["vocab_size"] == 256);
  for (const auto& entry : fs::directory_iterator(out))  // no temporary files left behind
    CHECK(entry.path().filename().string().find(".tmp-") == std::string::npos);

  auto train = open_byte_corpus(out, Split::Train, 16, "text", "strata prepare text");
  CHECK(train->size() == 900 - 16);  // every offset whose window and next byte fit
  Example e = train->example(5);
  CHECK(e.inputs == std::vector<int64_t>(text.begin() + 5, text.begin() + 21));
  CHECK(e.targets == std::vector<int64_t>(text.begin() + 6, text.begin() + 22));
  CHECK(train->example(train->size() - 1).targets.back() == text[899]);
  CHECK(train->num_classes() == 256);

  auto val = open_byte_corpus(out, Split::Val, 16, "text", "strata prepare text");
  CHECK(val->size() == (100 - 1) / 16);  // non-overlapping windows
  CHECK(val->example(2).inputs == std::vector<int64_t>(text.begin() + 932, text.begin() + 948));
  CHECK(val->description() == "text val: 100 bytes, 6 windows of 16");

  config::Config recipe = config::Config::from_yaml_string(
      fmt::format("data:\n  name: text\n  path: {}\n  seq_len: 16\n", out), "recipe.yaml");
  CHECK(make_dataset(recipe, "data", Split::Train)->size() == 884);
  CHECK_NOTHROW(recipe.check_all_read());

  CHECK(message_of([&] { open_byte_corpus(out, Split::Val, 100, "text", "strata prepare text"); }) ==
        out + "/val.bin: 100 bytes cannot hold one window of seq_len 100 (plus its next byte)");
  fs::resize_file(fs::path(out) / "val.bin", 50);
  CHECK(message_of([&] { open_byte_corpus(out, Split::Val, 16, "text", "strata prepare text"); }) ==
        out + "/val.bin: 50 bytes, but meta.json says 100; make the corpus again with `strata prepare text`");
  CHECK(message_of([&] { prepare_text_corpus((folder.path / "absent.txt").string(), out, 0.1); }) ==
        (folder.path / "absent.txt").string() + ": no such file (or it cannot be read)");
  CHECK(message_of([&] { prepare_text_corpus((folder.path / "input.txt").string(), out, 1.5); }) ==
        (folder.path / "input.txt").string() + ": the validation fraction must be in (0, 1), got 1.5");
}

TEST_CASE("missing corpus files name the file and the command that makes them") {
  config::Config recipe = config::Config::from_yaml_string(
      "data:\n  name: bible_kjv\n  path: /nonexistent/kjv\n  seq_len: 64\n", "recipe.yaml");
  CHECK(message_of([&] { make_dataset(recipe, "data", Split::Train); }) ==
        "/nonexistent/kjv/train.bin: no such file; make it with `strata prepare bible_kjv`");
  config::Config typo = config::Config::from_yaml_string("data:\n  name: bible\n  seq_len: 64\n", "recipe.yaml");
  CHECK(message_of([&] { make_dataset(typo, "data", Split::Train); }) ==
        "recipe.yaml:2: data.name: expected one of bible_kjv, text, fashion_mnist, selective_copying, "
        "induction_heads, mqar, passkey, joint_recall, got 'bible' (did you mean bible_kjv?)");
}

TEST_CASE("the King James Bible comes from the bible program without verse references") {
  std::string text = bible_kjv_text();
  CHECK(text.rfind("In the beginning God created the heaven and the earth.\nAnd the earth was without form", 0) == 0);
  CHECK(text.size() > 4000000);
  CHECK(std::count(text.begin(), text.end(), '\n') == 31102);
  const std::string last = "The grace of our Lord Jesus Christ be with you all. Amen.\n";
  CHECK(text.compare(text.size() - last.size(), last.size(), last) == 0);
  CHECK(text.find("Ge1:") == std::string::npos);

  TemporaryFolder folder("data-test-kjv");
  CorpusSummary summary = prepare_bible_kjv((folder.path / "kjv").string(), 0.1);
  CHECK(summary.train_bytes + summary.val_bytes == static_cast<int64_t>(text.size()));
  CHECK(read_file(folder.path / "kjv" / "train.bin") == text.substr(0, summary.train_bytes));

  // Without the program on PATH the message says which package to install.
  std::string path = std::getenv("PATH");
  setenv("PATH", folder.path.c_str(), 1);
  std::string missing = message_of([] { bible_kjv_text(); });
  setenv("PATH", path.c_str(), 1);
  CHECK(missing ==
        "the program `bible` was not found on PATH: install the Debian package bible-kjv (apt-get install bible-kjv)");
}

// ---------------------------------------------------------------------------
// Fashion-MNIST

TEST_CASE("Fashion-MNIST reads with the known first labels, shapes and balanced classes") {
  ImageSet train = read_fashion_mnist(kFashionMnistFolder, Split::Train);
  CHECK(train.count == 60000);
  CHECK(train.rows == 28);
  CHECK(train.columns == 28);
  CHECK(train.pixels.size() == 60000u * 784u);
  CHECK(std::vector<uint8_t>(train.labels.begin(), train.labels.begin() + 8) ==
        std::vector<uint8_t>{9, 0, 0, 3, 0, 2, 7, 2});
  std::vector<int> per_class(10);
  for (uint8_t label : train.labels) ++per_class[label];
  CHECK(per_class == std::vector<int>(10, 6000));
  CHECK(fashion_mnist_class_names()[9] == "Ankle boot");

  auto test = open_fashion_mnist(kFashionMnistFolder, Split::Val);
  CHECK(test->size() == 10000);
  CHECK(test->num_classes() == 10);
  CHECK(test->example_shape().inputs == Shape{1, 28, 28});
  Example first = test->example(0);
  CHECK(first.targets == std::vector<int64_t>{9});
  CHECK(first.pixels.size() == 784);
  CHECK(*std::min_element(first.pixels.begin(), first.pixels.end()) == 0.0f);
  CHECK(*std::max_element(first.pixels.begin(), first.pixels.end()) <= 1.0f);
  CHECK(*std::max_element(first.pixels.begin(), first.pixels.end()) > 0.5f);

  Loader loader(test, 8, 1, 0, 1, false);
  Batch batch = loader.next();
  CHECK(batch.inputs.shape() == Shape{8, 1, 28, 28});
  CHECK(batch.inputs.dtype() == DType::Float32);
  CHECK(batch.targets.shape() == Shape{8});
  CHECK(batch.targets.to_vector<int64_t>() == std::vector<int64_t>{9, 2, 1, 1, 6, 1, 4, 6});
}

TEST_CASE("damaged Fashion-MNIST files are named with what is wrong") {
  TemporaryFolder folder("data-test-fmnist");
  const fs::path images = folder.path / "train-images-idx3-ubyte.gz", labels = folder.path / "train-labels-idx1-ubyte.gz";
  CHECK(message_of([&] { read_fashion_mnist(folder.path.string(), Split::Train); }) ==
        images.string() +
            ": no such file (install the Debian package dataset-fashion-mnist, or set data.path to a folder "
            "holding the Fashion-MNIST idx .gz files)");

  std::vector<uint8_t> good_images = idx_header(0x803, {2, 28, 28});
  good_images.resize(good_images.size() + 2 * 784, 7);
  std::vector<uint8_t> good_labels = idx_header(0x801, {2});
  good_labels.insert(good_labels.end(), {3, 4});
  write_bytes(images, idx_header(0x801, {2, 28, 28}));
  write_bytes(labels, good_labels);
  CHECK(message_of([&] { read_fashion_mnist(folder.path.string(), Split::Train); }) ==
        images.string() + ": bad magic number 0x00000801, expected 0x00000803 (an idx3 file of unsigned bytes)");

  std::vector<uint8_t> short_images(good_images.begin(), good_images.end() - 100);
  write_bytes(images, short_images);
  CHECK(message_of([&] { read_fashion_mnist(folder.path.string(), Split::Train); }) ==
        images.string() + ": truncated: expected 1568 bytes of pixels after the header, got 1468");

  write_bytes(images, good_images);
  good_labels.back() = 12;
  write_bytes(labels, good_labels);
  CHECK(message_of([&] { read_fashion_mnist(folder.path.string(), Split::Train); }) ==
        labels.string() + ": label 12 of image 1 is not a class in [0, 10)");

  good_labels.back() = 4;
  write_bytes(labels, good_labels);
  ImageSet set = read_fashion_mnist(folder.path.string(), Split::Train);
  CHECK(set.count == 2);
  CHECK(set.labels == std::vector<uint8_t>{3, 4});

  // A real compressed file cut in half.
  const fs::path test_images = folder.path / "t10k-images-idx3-ubyte.gz";
  fs::copy_file(fs::path(kFashionMnistFolder) / "t10k-images-idx3-ubyte.gz", test_images);
  fs::resize_file(test_images, fs::file_size(test_images) / 2);
  fs::copy_file(fs::path(kFashionMnistFolder) / "t10k-labels-idx1-ubyte.gz", folder.path / "t10k-labels-idx1-ubyte.gz");
  std::string cut = message_of([&] { read_fashion_mnist(folder.path.string(), Split::Val); });
  CHECK(cut.rfind(test_images.string() + ": truncated: expected 7840000 bytes of pixels after the header, got ", 0) ==
        0);
}

// ---------------------------------------------------------------------------
// Synthetic tasks

TEST_CASE("selective copying: the scored targets are exactly the scattered tokens, in order") {
  SelectiveCopyingOptions options{64, 10, 8};
  for (int64_t index = 0; index < 20; ++index) {
    Example e = selective_copying_example(options, 3, index);
    REQUIRE(e.inputs.size() == 64);
    std::vector<int64_t> scattered;
    for (int64_t t = 0; t < 56; ++t) {
      CHECK(e.targets[t] == kIgnoreIndex);
      CHECK(e.inputs[t] != 9);  // no marker among the data
      if (e.inputs[t] != 0) scattered.push_back(e.inputs[t]);
    }
    std::vector<int64_t> copied(e.targets.begin() + 56, e.targets.end());
    CHECK(scattered == copied);
    for (int64_t t = 56; t < 64; ++t) CHECK(e.inputs[t] == 9);
    for (int64_t token : copied) CHECK((token >= 1 && token <= 8));
  }
  CHECK(message_of([&] { selective_copying_example({20, 10, 16}, 0, 0); }) ==
        "selective_copying: seq_len 20 is too short to scatter and recall 16 tokens (needs at least 32)");
}

TEST_CASE("induction heads: the last trigger asks for the token after the first") {
  InductionHeadsOptions options{32, 8};
  for (int64_t index = 0; index < 50; ++index) {
    Example e = induction_heads_example(options, 5, index);
    std::vector<int64_t> triggers;
    for (int64_t t = 0; t < 32; ++t)
      if (e.inputs[t] == 7) triggers.push_back(t);
    REQUIRE(triggers.size() == 2);
    CHECK(triggers[1] == 31);
    CHECK(count_scored(e) == 1);
    CHECK(e.targets[31] == e.inputs[triggers[0] + 1]);
    CHECK(e.targets[31] != 7);
  }
}

TEST_CASE("mqar: each key is queried once, at even offsets soon after the pairs, answered by its value") {
  MqarOptions options{128, 64, 8, 0.01};
  double mean_slot = 0;
  const int examples = 200;
  for (int64_t index = 0; index < examples; ++index) {
    Example e = mqar_example(options, 11, index);
    std::map<int64_t, int64_t> value_of;
    for (int i = 0; i < 8; ++i) {
      int64_t key = e.inputs[2 * i], value = e.inputs[2 * i + 1];
      CHECK((key >= 1 && key < 32));
      CHECK((value >= 32 && value < 64));
      value_of[key] = value;
    }
    CHECK(value_of.size() == 8);  // distinct keys
    std::set<int64_t> queried;
    for (int64_t t = 16; t < 128; ++t) {
      if (e.targets[t] == kIgnoreIndex) {
        CHECK(e.inputs[t] == 0);
        continue;
      }
      CHECK(t % 2 == 0);
      CHECK(e.targets[t] == value_of.at(e.inputs[t]));
      queried.insert(e.inputs[t]);
      mean_slot += (t - 16) / 2.0 / (8.0 * examples);
    }
    CHECK(queried.size() == 8);
    CHECK(count_scored(e) == 8);
  }
  // Weights (slot + 1)^-0.99 over 56 slots: far below the uniform mean of 27.5.
  CHECK(mean_slot < 20.0);
}

TEST_CASE("passkey: the key is hidden at the requested depth and only its digits are scored") {
  auto text_of = [](const Example& e) { return std::string(e.inputs.begin(), e.inputs.end()); };
  PasskeyOptions options{512, 5, 0.0};
  Example shallow = passkey_example(options, 2, 0);
  std::string text = text_of(shallow);
  REQUIRE(text.size() == 512);
  size_t needle = text.find("The pass key is ");
  REQUIRE(needle != std::string::npos);
  std::string key = text.substr(needle + 16, 5);
  CHECK(std::all_of(key.begin(), key.end(), ::isdigit));
  CHECK(text.substr(needle + 21, 30) == ". Remember it. " + key + " is the pa");
  CHECK(text.find("I will quiz you about the important info there. The pass key is") != std::string::npos);
  // Inputs end one byte before the text: "... The pass key is 7143"; targets hold the next bytes.
  CHECK(count_scored(shallow) == 5);
  std::string answer;
  for (int64_t t = 512 - 5; t < 512; ++t) answer += static_cast<char>(shallow.targets[t]);
  CHECK(answer == key);
  CHECK(text.substr(512 - 20) == "The pass key is " + key.substr(0, 4));

  options.depth = 1.0;
  std::string deep = text_of(passkey_example(options, 2, 0));
  CHECK(deep.find(key + " is the pass key. What is the pass key?") != std::string::npos);
  options.depth = 0.5;
  size_t middle = text_of(passkey_example(options, 2, 0)).find("The pass key is");
  CHECK(middle > 150);
  CHECK(middle < 350);
  CHECK(message_of([&] { passkey_example({100, 5, -1}, 0, 0); }) ==
        "passkey: seq_len 100 is too short: the prompt alone needs 238 bytes");
}

TEST_CASE("joint recall: each query is answered by the value its key has in its context") {
  JointRecallOptions options{96, 40, 3, 4, 12};
  for (int64_t index = 0; index < 20; ++index) {
    Example e = joint_recall_example(options, 4, index);
    // The table: context tokens 1..3 each followed by 4 (key 4..7, value 8..39) pairs.
    std::map<std::pair<int64_t, int64_t>, int64_t> table;
    int64_t position = 0;
    for (int c = 0; c < 3; ++c) {
      int64_t context = e.inputs[position++];
      CHECK((context >= 1 && context <= 3));
      for (int k = 0; k < 4; ++k, position += 2) {
        CHECK((e.inputs[position] >= 4 && e.inputs[position] <= 7));
        CHECK(e.inputs[position + 1] >= 8);
        table[{context, e.inputs[position]}] = e.inputs[position + 1];
      }
    }
    CHECK(table.size() == 12);
    CHECK(count_scored(e) == 12);
    std::set<std::pair<int64_t, int64_t>> asked;
    for (int64_t t = 0; t < 96; ++t) {
      if (e.targets[t] == kIgnoreIndex) continue;
      std::pair<int64_t, int64_t> query{e.inputs[t - 1], e.inputs[t]};
      CHECK(e.targets[t] == table.at(query));
      asked.insert(query);
    }
    CHECK(asked.size() == 12);  // the whole table
  }
}

TEST_CASE("every synthetic task is a function of (seed, index) alone") {
  config::Config recipe = config::Config::from_yaml_string(
      "data:\n  seq_len: 256\n  seed: 9\n  train_examples: 50\n  val_examples: 10\n", "recipe.yaml");
  for (const char* name : {"selective_copying", "induction_heads", "mqar", "passkey", "joint_recall"}) {
    CAPTURE(name);
    recipe.set("data.name", name);
    auto train = make_dataset(recipe, "data", Split::Train);
    auto again = make_dataset(recipe, "data", Split::Train);
    auto val = make_dataset(recipe, "data", Split::Val);
    CHECK(train->size() == 50);
    CHECK(val->size() == 10);
    CHECK(train->example_shape().inputs == Shape{256});
    CHECK(train->example(7).inputs == again->example(7).inputs);
    CHECK(train->example(7).targets == again->example(7).targets);
    CHECK(train->example(7).inputs != train->example(8).inputs);
    CHECK(train->example(3).inputs != val->example(3).inputs);  // val draws another stream
    recipe.set("data.seed", "10");
    CHECK(make_dataset(recipe, "data", Split::Train)->example(7).inputs != train->example(7).inputs);
    recipe.set("data.seed", "9");
  }
}

// ---------------------------------------------------------------------------
// Loader

TEST_CASE("loader shards are disjoint, equal in length, and form the single-rank global batches") {
  auto dataset = std::make_shared<NumberedDataset>(103);
  const int world = 3;
  std::vector<std::unique_ptr<Loader>> ranks;
  for (int r = 0; r < world; ++r) ranks.push_back(std::make_unique<Loader>(dataset, 4, 7, r, world));
  Loader single(dataset, 12, 7);
  CHECK(ranks[0]->batches_per_epoch() == 8);  // floor(103 / 12): the tail is dropped
  CHECK(single.batches_per_epoch() == 8);
  std::set<int64_t> seen;
  for (int64_t position = 0; position < 8; ++position) {
    std::vector<int64_t> global;
    for (auto& loader : ranks) {
      Batch batch = loader->next();
      CHECK(batch.epoch == 0);
      CHECK(batch.position == position);
      CHECK(batch.inputs.shape() == Shape{4, 2});
      for (int64_t index : first_inputs(batch)) {
        CHECK(seen.insert(index).second);  // never seen on any rank
        global.push_back(index);
      }
    }
    CHECK(first_inputs(single.next()) == global);
  }
  CHECK(seen.size() == 96);
  for (auto& loader : ranks) CHECK(loader->next().epoch == 1);  // every rank turns the epoch together
}

TEST_CASE("each epoch is a new permutation; without shuffle the order is sequential") {
  for (int64_t n : {1, 2, 3, 5, 17, 1000, 1025}) {
    CAPTURE(n);
    Loader loader(std::make_shared<NumberedDataset>(n), 1, 42);
    std::vector<int64_t> epoch0, epoch1;
    for (int64_t i = 0; i < n; ++i) epoch0.push_back(first_inputs(loader.next())[0]);
    for (int64_t i = 0; i < n; ++i) epoch1.push_back(first_inputs(loader.next())[0]);
    std::vector<int64_t> sorted0 = epoch0, sorted1 = epoch1, all(n);
    std::iota(all.begin(), all.end(), 0);
    std::sort(sorted0.begin(), sorted0.end());
    std::sort(sorted1.begin(), sorted1.end());
    CHECK(sorted0 == all);  // a permutation: every index exactly once
    CHECK(sorted1 == all);
    if (n >= 17) {
      CHECK(epoch0 != epoch1);
      CHECK(epoch0 != all);
    }
  }
  Loader sequential(std::make_shared<NumberedDataset>(10), 3, 42, 0, 1, false);
  CHECK(first_inputs(sequential.next()) == std::vector<int64_t>{0, 1, 2});
  CHECK(first_inputs(sequential.next()) == std::vector<int64_t>{3, 4, 5});
  CHECK(sequential.batch_indices(4, 2) == std::vector<int64_t>{6, 7, 8});
}

TEST_CASE("state and restore reproduce the exact batches, across an epoch boundary") {
  auto dataset = std::make_shared<NumberedDataset>(50);
  Loader original(dataset, 4, 123, 1, 2);  // 6 batches per epoch
  for (int i = 0; i < 5; ++i) original.next();
  LoaderState saved = original.state();
  CHECK(saved == LoaderState{0, 5, 123});
  std::vector<Batch> expected;
  for (int i = 0; i < 7; ++i) expected.push_back(original.next());
  CHECK(expected[1].epoch == 1);

  Loader resumed(dataset, 4, 999, 1, 2);  // the seed comes from the state
  resumed.restore(saved);
  for (const Batch& want : expected) {
    Batch got = resumed.next();
    CHECK(got.epoch == want.epoch);
    CHECK(got.position == want.position);
    CHECK(got.inputs.to_vector<int64_t>() == want.inputs.to_vector<int64_t>());
    CHECK(got.targets.to_vector<int64_t>() == want.targets.to_vector<int64_t>());
  }
  CHECK(resumed.state() == original.state());

  original.restore(saved);  // also while a batch is being prefetched
  CHECK(original.next().inputs.to_vector<int64_t>() == expected[0].inputs.to_vector<int64_t>());

  CHECK(message_of([&] { original.restore({0, 6, 1}); }) ==
        "Loader: cannot resume at epoch 0 batch 6: an epoch has 6 batches here (did the dataset, batch size or "
        "number of ranks change?)");
}

TEST_CASE("loader errors: too little data, and a failing example surfaces in next()") {
  CHECK(message_of([] { Loader(std::make_shared<NumberedDataset>(5), 4, 0, 0, 2); }) ==
        "Loader: the dataset (numbered: 5 examples) has fewer examples than one global batch of 8 (4 per rank x 2 "
        "ranks)");
  CHECK(message_of([] { Loader(std::make_shared<NumberedDataset>(5), 1, 0, 2, 2); }) ==
        "Loader: rank 2 is not in [0, world size 2)");
  Loader loader(std::make_shared<NumberedDataset>(10, 3), 1, 0, 0, 1, false);
  for (int i = 0; i < 3; ++i) CHECK_NOTHROW(loader.next());
  CHECK(message_of([&] { loader.next(); }) == "example 3 is unreadable");
  CHECK(message_of([&] { loader.next(); }) == "example 3 is unreadable");  // the position is not skipped
  CHECK(loader.state() == LoaderState{0, 3, 0});
}
