// Recipes: includes, deep merge, overrides, and the exact text (with file:line) of
// every error a user can meet.
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <limits>

#include "strata/config/config.h"
#include "strata/core/error.h"
#include "support/check.h"

using strata::Error;
using strata::config::Config;
using doctest::Contains;

namespace {

// Messages name files relative to the working directory: run from the source tree.
const std::string kFixtures = [] {
  if (const char* source = std::getenv("STRATA_SOURCE_DIR")) std::filesystem::current_path(source);
  return std::string("tests/runtime/fixtures/config/");
}();

using strata::testing::message_of;

// Reads every key of recipe.yaml, so check_all_read() has nothing left to report.
void read_everything_in_recipe(const Config& c) {
  for (const char* key : {"model.family", "model.norm.kind", "optim.name"}) c.get<std::string>(key);
  for (const char* key : {"model.d_model", "model.d_state", "train.steps", "train.batch_size", "seed"})
    c.get<int64_t>(key);
  for (const char* key : {"model.norm.eps", "optim.lr", "optim.weight_decay"}) c.get<double>(key);
  c.get<std::vector<int64_t>>("model.layers");
  c.get<std::vector<double>>("optim.betas");
}

}  // namespace

TEST_CASE("includes deep-merge in order, nested, with the including file's keys last") {
  Config c = Config::load(kFixtures + "recipe.yaml");
  CHECK(c.get<std::string>("model.family") == "mamba");    // from pieces/model.yaml
  CHECK(c.get<int>("model.d_state") == 32);                 // recipe.yaml overrides the include
  CHECK(c.get<int64_t>("model.d_model") == 64);             // kept from the include (maps merge)
  CHECK(c.get<double>("model.norm.eps") == 1e-5);
  CHECK(c.get<int>("train.steps") == 200);
  CHECK(c.get<int>("train.batch_size") == 8);
  CHECK(c.get<double>("optim.lr") == 3e-4);                 // train.yaml beats the optim.yaml it includes
  CHECK(c.get<double>("optim.weight_decay") == 0.1);        // nested include
  CHECK(c.get<std::vector<double>>("optim.betas") == std::vector<double>{0.9, 0.95});
  CHECK(c.get<std::vector<int64_t>>("model.layers") == std::vector<int64_t>{1, 2, 3});
  // Key order: includes first (train.yaml's own include, optim.yaml, before train.yaml's keys).
  CHECK(c.keys("") == std::vector<std::string>{"model", "optim", "train", "seed"});
  CHECK(c.keys("optim") == std::vector<std::string>{"name", "lr", "betas", "weight_decay"});
  CHECK_FALSE(c.has("include"));
  CHECK(c.get<int>("model.layers.1") == 2);  // list elements by index
}

TEST_CASE("overrides parse YAML values, create keys, and keep 'command line' as their source") {
  Config c = Config::load(kFixtures + "recipe.yaml",
                          {"train.steps=500", "optim.lr=3e-4", "model.layers=[4,5]", "data.name=bible_kjv",
                           "model.norm={eps: 1e-6}", "train.resume=null"});
  CHECK(c.get<int64_t>("train.steps") == 500);
  CHECK(c.get<double>("optim.lr") == 3e-4);
  CHECK(c.get<std::vector<int64_t>>("model.layers") == std::vector<int64_t>{4, 5});
  CHECK(c.get<std::string>("data.name") == "bible_kjv");
  CHECK(c.get<double>("model.norm.eps") == 1e-6);
  CHECK(c.get<std::string>("model.norm.kind") == "rms");  // a map override merges
  CHECK_FALSE(c.has("train.resume"));                       // null counts as absent
  CHECK(c.get<std::string>("train.resume", "auto") == "auto");

  Config bad = Config::load(kFixtures + "recipe.yaml", {"model.d_state=abc"});
  CHECK(message_of([&] { bad.get<int>("model.d_state"); }) ==
        "command line: model.d_state: expected an integer, got 'abc'");
  CHECK(message_of([&] { Config::load(kFixtures + "recipe.yaml", {"train.steps"}); }) ==
        "command line: 'train.steps' is not an override of the form key.path=value");
  CHECK(message_of([&] { Config::load(kFixtures + "recipe.yaml", {"model.family.kind=x"}); }) ==
        "command line: model.family.kind=x: model.family is the value 'mamba' at "
        "tests/runtime/fixtures/config/pieces/model.yaml:2, not a map");
  CHECK(message_of([&] { Config::load(kFixtures + "recipe.yaml", {"model.layers=[1,"}); }).rfind(
            "command line: model.layers=[1,: YAML syntax error: ", 0) == 0);

  Config set_later = Config::load(kFixtures + "recipe.yaml");
  set_later.set("train.steps", "7");
  set_later.set("eval.every", "50");
  CHECK(set_later.get<int>("train.steps") == 7);
  CHECK(set_later.get<int>("eval.every") == 50);
}

TEST_CASE("typed getters name the file and line of the offending value") {
  Config c = Config::load(kFixtures + "recipe.yaml");
  CHECK(message_of([&] { c.get<int>("model.family"); }) ==
        "tests/runtime/fixtures/config/pieces/model.yaml:2: model.family: expected an integer, got 'mamba'");
  CHECK(message_of([&] { c.get<int>("train.epochs"); }) ==
        "tests/runtime/fixtures/config/recipe.yaml: train.epochs: required key is missing");
  CHECK(message_of([&] { c.get<bool>("optim.name"); }) ==
        "tests/runtime/fixtures/config/pieces/optim.yaml:2: optim.name: expected true or false, got 'adamw'");
  CHECK(message_of([&] { c.get<std::string>("model.norm"); }) ==
        "tests/runtime/fixtures/config/pieces/model.yaml:6: model.norm: expected a string, got a map");
  CHECK(message_of([&] { c.get<int>("model.layers"); }) ==
        "tests/runtime/fixtures/config/pieces/model.yaml:5: model.layers: expected an integer, got a list");
  CHECK(message_of([&] { c.get<std::vector<std::string>>("seed"); }) ==
        "tests/runtime/fixtures/config/recipe.yaml:7: seed: expected a list of strings, got '7'");
  CHECK(message_of([&] { c.get<int>("model.family.width"); }) ==
        "tests/runtime/fixtures/config/pieces/model.yaml:2: model.family: expected a map holding width, got 'mamba'");
  CHECK(c.get<int>("model.absent", 5) == 5);
  CHECK(c.get<std::string>("seed") == "7");  // any scalar reads as a string

  Config values = Config::from_yaml_string(
      "a: 1e5\nb: 0x10\nc: 2.5\nd: yes\ne: 3000000000\nf: [1, x]\ng: -.inf\nh: '12'\n", "values.yaml");
  CHECK(values.get<int64_t>("a") == 100000);
  CHECK(values.get<int>("b") == 16);
  CHECK(values.get<bool>("d"));
  CHECK(values.get<int64_t>("e") == 3000000000LL);
  CHECK(values.get<double>("g") == -std::numeric_limits<double>::infinity());
  CHECK(values.get<std::string>("h") == "12");
  CHECK(message_of([&] { values.get<int>("c"); }) == "values.yaml:3: c: expected an integer, got '2.5'");
  CHECK(message_of([&] { values.get<int>("e"); }) ==
        "values.yaml:5: e: expected an integer in [-2147483648, 2147483647], got '3000000000'");
  CHECK(message_of([&] { values.get<std::vector<int64_t>>("f"); }) ==
        "values.yaml:6: f[1]: expected an integer, got 'x'");
}

TEST_CASE("range and choice helpers say what was expected") {
  Config c = Config::from_yaml_string("d_state: -4\nlr: 1.5\nfamily: mamb\nlayers: 100\n", "model.yaml");
  CHECK(message_of([&] { c.get_positive<int>("d_state"); }) ==
        "model.yaml:1: d_state: expected a positive integer, got -4");
  CHECK(message_of([&] { c.get_positive<double>("d_state"); }) ==
        "model.yaml:1: d_state: expected a positive number, got -4");
  CHECK(message_of([&] { c.get_in_range<double>("lr", 0.0, 1.0); }) ==
        "model.yaml:2: lr: expected a number in [0, 1], got 1.5");
  CHECK(message_of([&] { c.get_in_range<int64_t>("layers", 1, 64); }) ==
        "model.yaml:4: layers: expected an integer in [1, 64], got 100");
  CHECK(message_of([&] { c.get_choice("family", {"mamba", "mamba2", "transformer"}); }) ==
        "model.yaml:3: family: expected one of mamba, mamba2, transformer, got 'mamb' (did you mean mamba?)");
  CHECK(c.get_in_range<int>("layers", 1, 100) == 100);  // inclusive
  CHECK(c.get_positive<int>("heads", 8) == 8);
  CHECK(c.get_in_range<double>("dropout", 0.0, 1.0, 0.1) == 0.1);
  CHECK(c.get_choice("norm", {"rms", "layer"}, "rms") == "rms");
}

TEST_CASE("check_all_read reports the first unread key with its line and the nearest read key") {
  Config c = Config::load(kFixtures + "typo.yaml");
  c.get<std::string>("model.family");
  c.get<int>("model.d_model");
  c.get<int>("model.d_state");
  c.get<std::vector<int64_t>>("model.layers");
  c.get<std::string>("model.norm.kind");
  c.get<double>("model.norm.eps");
  CHECK(message_of([&] { c.check_all_read(); }) ==
        "tests/runtime/fixtures/config/typo.yaml:5: unknown key model.d_stat (did you mean model.d_state?)");

  // A key that was asked for with a fallback (absent from the file) is a candidate too,
  // and a key nothing resembles gets no suggestion.
  Config d = Config::from_yaml_string("train:\n  stpes: 10\n  warmup: 3\n", "r.yaml");
  d.get<int>("train.steps", 100);
  CHECK(message_of([&] { d.check_all_read(); }) == "r.yaml:2: unknown key train.stpes (did you mean train.steps?)");
  d.get<int>("train.stpes");
  CHECK(message_of([&] { d.check_all_read(); }) == "r.yaml:3: unknown key train.warmup");

  Config full = Config::load(kFixtures + "recipe.yaml");
  read_everything_in_recipe(full);
  CHECK_NOTHROW(full.check_all_read());

  // Lists: read whole, or element by element; keys() marks the children it returns.
  Config lists = Config::from_yaml_string("blocks:\n  - {kind: a}\n  - {kind: b, size: 2}\nextra: {x: 1}\n", "l.yaml");
  lists.get<std::string>("blocks.0.kind");
  lists.get<std::string>("blocks.1.kind");
  CHECK(message_of([&] { lists.check_all_read(); }) == "l.yaml:3: unknown key blocks.1.size");
  lists.get<int>("blocks.1.size");
  CHECK(lists.keys("extra") == std::vector<std::string>{"x"});
  CHECK_NOTHROW(lists.check_all_read());
}

TEST_CASE("file errors: syntax, missing files, include cycles, duplicates") {
  std::string syntax = message_of([&] { Config::load(kFixtures + "bad_syntax.yaml"); });
  CHECK(syntax.rfind("tests/runtime/fixtures/config/bad_syntax.yaml:4:", 0) == 0);  // where the list should have closed
  CHECK(syntax.find(": YAML syntax error: ") != std::string::npos);
  CHECK(syntax.find('\n') == std::string::npos);

  CHECK(message_of([&] { Config::load(kFixtures + "nope.yaml"); }) ==
        "tests/runtime/fixtures/config/nope.yaml: no such file");
  CHECK(message_of([&] { Config::load(kFixtures + "missing_include.yaml"); }) ==
        "tests/runtime/fixtures/config/pieces/absent.yaml: no such file (included from "
        "tests/runtime/fixtures/config/missing_include.yaml:2)");
  CHECK(message_of([&] { Config::load(kFixtures + "cycle_a.yaml"); }) ==
        "tests/runtime/fixtures/config/cycle_b.yaml:2: include cycle: tests/runtime/fixtures/config/cycle_a.yaml -> "
        "tests/runtime/fixtures/config/cycle_b.yaml -> tests/runtime/fixtures/config/cycle_a.yaml");
  CHECK(message_of([&] { Config::from_yaml_string("a: 1\nb: 2\na: 3\n", "dup.yaml"); }) ==
        "dup.yaml:3: duplicate key a (first given at dup.yaml:1)");
  CHECK(message_of([&] { Config::from_yaml_string("- 1\n- 2\n", "list.yaml"); }) ==
        "list.yaml:1: a recipe is a map of keys, got a list");
  CHECK(message_of([&] { Config::from_yaml_string("include: {a: 1}\n", "inc.yaml"); }) ==
        "inc.yaml:1: include: expected a file name or a list of file names, got a map");
  CHECK(message_of([&] { Config::from_yaml_string("model:\n  a.b: 1\n", "dot.yaml"); }) ==
        "dot.yaml:2: key 'model.a.b' cannot be addressed by a dotted path (keys are non-empty and have no dots)");
}

TEST_CASE("to_yaml writes the resolved recipe, which loads back to the same values") {
  Config c = Config::load(kFixtures + "recipe.yaml", {"model.tag='007'", "train.flags=[]", "train.resume=null"});
  std::string text = c.to_yaml();
  CHECK(text.find("include") == std::string::npos);
  Config back = Config::from_yaml_string(text, "resolved.yaml");
  read_everything_in_recipe(back);
  CHECK(back.get<int>("model.d_state") == 32);
  CHECK(back.get<double>("optim.lr") == 3e-4);
  CHECK(back.get<double>("model.norm.eps") == 1e-5);
  CHECK(back.get<std::string>("model.tag") == "007");
  CHECK(back.get<std::vector<int64_t>>("train.flags").empty());
  CHECK_FALSE(back.has("train.resume"));
  CHECK(back.to_yaml() == text);
}

TEST_CASE("copies are independent") {
  Config a = Config::from_yaml_string("x: 1\n", "a.yaml");
  Config b = a;
  b.set("x", "2");
  CHECK(a.get<int>("x") == 1);
  CHECK(b.get<int>("x") == 2);
}
