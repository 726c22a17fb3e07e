// DataParallel::check_consistency with two Gloo ranks in one process (threads,
// file rendezvous): ranks whose recipe, parameters or start step differ from rank
// 0's are refused on every rank, and the message names them. Through the strata
// program the recipe check comes first (data_parallel_test), so the parameter and
// step checks are tested here.
#include <filesystem>
#include <future>
#include <unistd.h>

#include "strata/dist/data_parallel.h"
#include "support/check.h"

namespace fs = std::filesystem;
using namespace strata;
using namespace strata::dist;

namespace {

struct RankView {
  std::string config = "model: tiny\n";
  Shape weight_shape{4, 3};
  DType weight_dtype = DType::Float32;
  int64_t step = 0;
};

// What check_consistency threw on each rank ("" when it passed).
std::vector<std::string> check_two_ranks(const std::string& name, const RankView& rank0, const RankView& rank1) {
  fs::path dir = fs::temp_directory_path() / fmt::format("strata-consistency-test-{}-{}", getpid(), name);
  fs::remove_all(dir);
  std::vector<std::future<std::string>> ranks;
  for (int rank = 0; rank < 2; ++rank)
    ranks.push_back(std::async(std::launch::async, [&, rank] {
      LaunchInfo launch;
      launch.rank = rank;
      launch.world_size = 2;
      launch.rendezvous_dir = dir.string();
      DataParallelOptions options;
      options.backend = "gloo";
      options.timeout_seconds = 30;
      DataParallel data_parallel(launch, options, Device::cpu());
      const RankView& view = rank == 0 ? rank0 : rank1;
      std::vector<nn::NamedParameter> parameters{
          {"layers.0.weight", Tensor::zeros(view.weight_shape, view.weight_dtype), true},
          {"layers.0.bias", Tensor::zeros({3}), false}};
      try {
        data_parallel.check_consistency(view.config, parameters, view.step);
        return std::string();
      } catch (const Error& e) {
        return std::string(e.what());
      }
    }));
  std::vector<std::string> messages;
  for (auto& r : ranks) messages.push_back(r.get());
  fs::remove_all(dir);
  return messages;
}

}  // namespace

TEST_CASE("ranks that agree pass the consistency check") {
  for (const std::string& message : check_two_ranks("same", {}, {})) CHECK(message.empty());
}

TEST_CASE("ranks whose parameters or start step differ are refused on every rank, naming them") {
  RankView other_shape, other_dtype, other_step, other_recipe;
  other_shape.weight_shape = {4, 2};
  other_dtype.weight_dtype = DType::Float64;
  other_step.step = 7;
  other_recipe.config = "model: small\n";
  const std::pair<const char*, RankView> cases[] = {
      {"the model parameters (names, dtypes, shapes) of rank(s) 1 differ from rank 0's", other_shape},
      {"the model parameters (names, dtypes, shapes) of rank(s) 1 differ from rank 0's", other_dtype},
      {"rank(s) 1 start at another step than rank 0 (step 0)", other_step},
      {"the resolved recipe of rank(s) 1 differs from rank 0's", other_recipe}};
  int index = 0;
  for (const auto& [expected, rank1] : cases) {
    CAPTURE(expected);
    for (const std::string& message : check_two_ranks(std::to_string(index++), {}, rank1))
      CHECK_MESSAGE(message.find(expected) != std::string::npos, message);
  }
}
