// Models built from recipe keys, as `strata train` builds them, for the model tests.
#pragma once

#include <memory>
#include <string>

#include "strata/config/config.h"
#include "strata/core/rng.h"
#include "strata/models/model.h"

namespace strata::testing {

// A model of `family` from the keys under `model:` (YAML lines indented by two
// spaces), drawn from `seed`; every key must be read.
inline std::shared_ptr<models::Model> build_model(const std::string& family, const std::string& model_keys,
                                                  uint64_t seed = 0) {
  Generator generator{seed, 0};
  config::Config c =
      config::Config::from_yaml_string("model:\n  family: " + family + "\n" + model_keys, "test recipe");
  auto model = models::build_model(c, generator);
  c.check_all_read();
  return model;
}

}  // namespace strata::testing
