// Module tree: parameter paths, weight-decay flags, deterministic initialisation,
// mode propagation, dtype moves and the errors of a badly built tree.
#include "support/check.h"
#include "strata/nn/layers.h"

using namespace strata;

namespace {

struct Block : nn::Module {
  Block(int64_t dim, Generator& generator) {
    norm = register_module("norm", std::make_shared<nn::RMSNorm>(dim));
    mlp = register_module("mlp", std::make_shared<nn::GatedMLP>(dim, 2 * dim, false, generator));
  }
  std::shared_ptr<nn::RMSNorm> norm;
  std::shared_ptr<nn::GatedMLP> mlp;
};

struct TinyModel : nn::Module {
  TinyModel(int64_t vocab, int64_t dim, int layers, Generator& generator) {
    embed = register_module("embed", std::make_shared<nn::Embedding>(vocab, dim, generator));
    blocks = register_module("layers", std::make_shared<nn::ModuleList>());
    for (int i = 0; i < layers; ++i) blocks->push_back(std::make_shared<Block>(dim, generator));
    norm_f = register_module("norm_f", std::make_shared<nn::LayerNorm>(dim));
    head = register_module("head", std::make_shared<nn::Linear>(dim, vocab, true, generator));
    register_parameter("scale", Tensor::ones({1}), false);
  }
  std::shared_ptr<nn::Embedding> embed;
  std::shared_ptr<nn::ModuleList> blocks;
  std::shared_ptr<nn::LayerNorm> norm_f;
  std::shared_ptr<nn::Linear> head;
};

// The output projection reuses the embedding table (tied weights).
struct Tied : nn::Module {
  explicit Tied(Generator& generator) {
    embed = register_module("embed", std::make_shared<nn::Embedding>(5, 3, generator));
    register_parameter("head_weight", embed->weight(), true);
  }
  std::shared_ptr<nn::Embedding> embed;
};

struct BadNames : nn::Module {
  void add(const std::string& name) { register_parameter(name, Tensor::zeros({2})); }
  void add_child(const std::string& name) { register_module(name, std::make_shared<nn::Dropout>(0.1)); }
};

}  // namespace

TEST_CASE("a nested model names its parameters by path, in registration order") {
  Generator generator{1, 0};
  TinyModel model(11, 4, 2, generator);
  std::vector<std::string> names;
  std::vector<bool> decays;
  for (const nn::NamedParameter& p : model.named_parameters()) {
    names.push_back(p.name);
    decays.push_back(p.weight_decay);
    CHECK(p.tensor.name() == p.name);
    CHECK(p.tensor.requires_grad());
  }
  std::vector<std::string> expected{
      "scale",                                                             // own parameters come first
      "embed.weight",
      "layers.0.norm.weight", "layers.0.mlp.gate.weight", "layers.0.mlp.up.weight", "layers.0.mlp.down.weight",
      "layers.1.norm.weight", "layers.1.mlp.gate.weight", "layers.1.mlp.up.weight", "layers.1.mlp.down.weight",
      "norm_f.weight", "norm_f.bias",
      "head.weight", "head.bias"};
  CHECK(names == expected);
  std::vector<bool> expected_decay{false, true, false, true, true, true, false, true, true, true, false, false, true, false};
  CHECK(decays == expected_decay);
  // 1 + 11*4 + 2 * (4 + 3 * 4*8) + 2*4 + (4*11 + 11)
  CHECK(model.num_parameters() == 1 + 44 + 2 * (4 + 96) + 8 + 55);
  CHECK(model.parameters().size() == expected.size());

  // A walk from a child names paths relative to that child.
  auto block = model.blocks->get<Block>(1);
  CHECK(block->named_parameters()[1].name == "mlp.gate.weight");

  std::vector<std::string> module_names;
  for (auto& [name, module] : model.named_modules()) module_names.push_back(name);
  CHECK(module_names == std::vector<std::string>{"", "embed", "layers", "layers.0", "layers.0.norm", "layers.0.mlp",
                                                  "layers.0.mlp.gate", "layers.0.mlp.up", "layers.0.mlp.down",
                                                  "layers.1", "layers.1.norm", "layers.1.mlp", "layers.1.mlp.gate",
                                                  "layers.1.mlp.up", "layers.1.mlp.down", "norm_f", "head"});
}

TEST_CASE("the same seed gives the same weights, another seed other weights") {
  Generator a{42, 0}, b{42, 0}, c{43, 0};
  TinyModel first(7, 6, 1, a), second(7, 6, 1, b), third(7, 6, 1, c);
  auto p1 = first.named_parameters(), p2 = second.named_parameters(), p3 = third.named_parameters();
  for (size_t i = 0; i < p1.size(); ++i) CHECK(p1[i].tensor.to_vector<float>() == p2[i].tensor.to_vector<float>());
  CHECK(a.offset == b.offset);
  CHECK(first.head->weight().to_vector<float>() != third.head->weight().to_vector<float>());
}

TEST_CASE("initial values follow the documented distributions") {
  Generator generator{5, 0};
  nn::Linear linear(64, 256, true, generator);
  double bound = 1.0 / 8.0, mean = 0.0, square = 0.0;
  std::vector<float> w = linear.weight().to_vector<float>();
  for (float v : w) {
    CHECK(std::fabs(v) <= bound);
    mean += v / w.size();
    square += v * v / w.size();
  }
  CHECK(std::fabs(mean) < 0.005);
  CHECK(square == doctest::Approx(bound * bound / 3).epsilon(0.05));  // variance of U(-b, b) is b^2 / 3
  for (float v : linear.bias().to_vector<float>()) CHECK(std::fabs(v) <= bound);

  nn::Embedding embedding(500, 64, generator, 0.5);
  double s = 0.0;
  for (float v : embedding.weight().to_vector<float>()) s += v * v / (500 * 64);
  CHECK(std::sqrt(s) == doctest::Approx(0.5).epsilon(0.03));

  nn::LayerNorm norm(3);
  CHECK(norm.parameter("weight").to_vector<float>() == std::vector<float>{1, 1, 1});
  CHECK(norm.parameter("bias").to_vector<float>() == std::vector<float>{0, 0, 0});
  CHECK(nn::LayerNorm(3, 1e-5, false).named_parameters().empty());
  CHECK_FALSE(nn::Linear(3, 2, false, generator).bias().defined());
}

TEST_CASE("train and eval reach every descendant") {
  Generator generator{1, 0};
  TinyModel model(5, 2, 2, generator);
  CHECK(model.blocks->get<Block>(1)->mlp->up->is_training());
  model.eval();
  for (auto& [name, module] : model.named_modules()) CHECK_MESSAGE(!module->is_training(), name);
  model.train();
  for (auto& [name, module] : model.named_modules()) CHECK_MESSAGE(module->is_training(), name);
}

TEST_CASE("to(dtype) replaces the parameters; the walk and the layers see the new ones") {
  Generator generator{3, 0};
  TinyModel model(5, 4, 1, generator);
  Tensor old_head = model.head->weight();
  std::vector<float> values = old_head.to_vector<float>();
  old_head.set_grad(Tensor::ones(old_head.shape()));
  model.to(DType::Float64);
  for (const nn::NamedParameter& p : model.named_parameters()) {
    CHECK(p.tensor.dtype() == DType::Float64);
    CHECK(p.tensor.requires_grad());
    CHECK(p.tensor.is_leaf());
  }
  Tensor new_head = model.head->weight();
  CHECK(new_head.impl() != old_head.impl());
  CHECK(old_head.dtype() == DType::Float32);  // an old handle keeps the old values
  CHECK(new_head.name() == "head.weight");
  std::vector<double> converted = new_head.to_vector<double>();
  for (size_t i = 0; i < values.size(); ++i) CHECK(converted[i] == static_cast<double>(values[i]));
  REQUIRE(new_head.grad().defined());
  CHECK(new_head.grad().dtype() == DType::Float64);

  Tensor hidden = model.norm_f->forward(Tensor::ones({2, 4}, DType::Float64));
  CHECK(hidden.dtype() == DType::Float64);

  model.zero_grad();
  for (const nn::NamedParameter& p : model.named_parameters()) CHECK_FALSE(p.tensor.grad().defined());
  CHECK_THROWS_WITH_AS(model.to(DType::Int32), doctest::Contains("not a floating dtype"), Error);
}

TEST_CASE("a tied parameter is listed once and stays tied when moved") {
  Generator generator{4, 0};
  Tied model(generator);
  auto params = model.named_parameters();
  REQUIRE(params.size() == 1);
  CHECK(params[0].name == "head_weight");  // own parameters are walked before children
  CHECK(model.num_parameters() == 15);
  model.to(DType::Float64);
  CHECK(model.parameter("head_weight").impl() == model.embed->weight().impl());
  CHECK(model.embed->weight().dtype() == DType::Float64);
}

TEST_CASE("a badly built tree says what is wrong") {
  BadNames m;
  m.add("w");
  CHECK_THROWS_WITH_AS(m.add("w"), doctest::Contains("'w' is already registered as a parameter"), Error);
  CHECK_THROWS_WITH_AS(m.add("a.b"), doctest::Contains("contain no '.'"), Error);
  CHECK_THROWS_WITH_AS(m.add(""), doctest::Contains("non-empty"), Error);
  m.add_child("drop");
  CHECK_THROWS_WITH_AS(m.add("drop"), doctest::Contains("already registered as a child module"), Error);
  CHECK_THROWS_WITH_AS(m.parameter("v"), doctest::Contains("no parameter named 'v'"), Error);

  nn::ModuleList list;
  list.push_back(std::make_shared<nn::Dropout>(0.5));
  CHECK(list.size() == 1);
  CHECK(list.get<nn::Dropout>(0)->p() == 0.5);
  CHECK_THROWS_WITH_AS(list.get<nn::Linear>(0), doctest::Contains("element 0 is not of the requested type"), Error);
  CHECK_THROWS_WITH_AS(list[3], doctest::Contains("index 3 out of range for a list of 1"), Error);
  Generator generator{0, 0};
  CHECK_THROWS_WITH_AS(nn::Linear(0, 3, true, generator), doctest::Contains("sizes must be positive"), Error);
  CHECK_THROWS_WITH_AS(nn::Dropout(1.0), doctest::Contains("outside [0, 1)"), Error);
  CHECK_THROWS_WITH_AS(nn::parse_activation("tanh"), doctest::Contains("unknown activation 'tanh'"), Error);
}
