// Learning-rate schedules: a plain value (it is what a recipe's `optim.schedule`
// section reads into and what a checkpoint records), with lr(step) a pure function
// of the step, so a resumed run gets the same rates as an uninterrupted one.
//
// `step` counts optimizer steps taken before the one about to run (0 for the first).
// Warmup rises linearly to the peak over warmup_steps steps, reaching
// peak * 1 / warmup_steps at step 0 (a first step at lr 0 would be wasted) and the
// peak at step warmup_steps - 1. Then:
//   constant: the peak, forever;
//   linear:   straight down from the peak to min_lr at total_steps;
//   cosine:   min_lr + (peak - min_lr) (1 + cos(pi progress)) / 2, where progress
//             goes from 0 at warmup_steps to 1 at total_steps;
// and min_lr from total_steps on.
#pragma once

#include <cstdint>
#include <string>

namespace strata::optim {

struct LearningRateSchedule {
  enum class Kind { Constant, Linear, Cosine };

  Kind kind = Kind::Constant;
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;  // where linear and cosine decay end; unused by constant
  double peak_lr = 1e-3;
  double min_lr = 0.0;

  // Throws strata::Error naming the field that is out of range.
  void validate() const;
  double lr(int64_t step) const;
};

LearningRateSchedule::Kind parse_schedule_kind(const std::string& name);  // "constant", "linear", "cosine"
const char* schedule_kind_name(LearningRateSchedule::Kind kind);

}  // namespace strata::optim
