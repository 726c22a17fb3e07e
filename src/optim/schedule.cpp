#include "strata/optim/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "strata/core/error.h"

namespace strata::optim {

void LearningRateSchedule::validate() const {
  STRATA_CHECK(std::isfinite(peak_lr) && peak_lr >= 0.0, "schedule: peak_lr {} must be a finite non-negative number",
               peak_lr);
  STRATA_CHECK(std::isfinite(min_lr) && min_lr >= 0.0 && min_lr <= peak_lr,
               "schedule: min_lr {} must lie in [0, peak_lr = {}]", min_lr, peak_lr);
  STRATA_CHECK(warmup_steps >= 0, "schedule: warmup_steps {} is negative", warmup_steps);
  if (kind != Kind::Constant)
    STRATA_CHECK(total_steps > warmup_steps, "schedule: {} decay needs total_steps ({}) above warmup_steps ({})",
                 schedule_kind_name(kind), total_steps, warmup_steps);
}

double LearningRateSchedule::lr(int64_t step) const {
  STRATA_CHECK(step >= 0, "schedule: step {} is negative", step);
  if (step < warmup_steps) return peak_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  if (kind == Kind::Constant) return peak_lr;
  if (step >= total_steps) return min_lr;
  double progress = static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps - warmup_steps);
  if (kind == Kind::Linear) return peak_lr + (min_lr - peak_lr) * progress;
  return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

LearningRateSchedule::Kind parse_schedule_kind(const std::string& name) {
  if (name == "constant") return LearningRateSchedule::Kind::Constant;
  if (name == "linear") return LearningRateSchedule::Kind::Linear;
  if (name == "cosine") return LearningRateSchedule::Kind::Cosine;
  STRATA_FAIL("unknown learning-rate schedule '{}' (expected constant, linear or cosine)", name);
}

const char* schedule_kind_name(LearningRateSchedule::Kind kind) {
  switch (kind) {
    case LearningRateSchedule::Kind::Constant: return "constant";
    case LearningRateSchedule::Kind::Linear: return "linear";
    case LearningRateSchedule::Kind::Cosine: return "cosine";
  }
  return "?";
}

}  // namespace strata::optim
