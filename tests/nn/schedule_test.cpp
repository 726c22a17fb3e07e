// Learning-rate schedules at the steps that matter: the start and end of warmup,
// points inside the decay, its end and beyond.
#include <cmath>
#include <numbers>

#include "support/check.h"
#include "strata/optim/schedule.h"

using namespace strata;
using optim::LearningRateSchedule;

namespace {
LearningRateSchedule make(LearningRateSchedule::Kind kind) {
  LearningRateSchedule schedule;
  schedule.kind = kind;
  schedule.warmup_steps = 10;
  schedule.total_steps = 110;
  schedule.peak_lr = 1.0;
  schedule.min_lr = 0.1;
  schedule.validate();
  return schedule;
}
}  // namespace

TEST_CASE("warmup rises linearly from peak / warmup at step 0 to the peak at its last step") {
  for (auto kind : {LearningRateSchedule::Kind::Constant, LearningRateSchedule::Kind::Linear,
                    LearningRateSchedule::Kind::Cosine}) {
    LearningRateSchedule s = make(kind);
    CHECK(s.lr(0) == doctest::Approx(0.1));
    CHECK(s.lr(4) == doctest::Approx(0.5));
    CHECK(s.lr(9) == doctest::Approx(1.0));
    CHECK(s.lr(10) == doctest::Approx(1.0));  // decay starts from the peak
  }
}

TEST_CASE("cosine decay follows the half cosine to min_lr and stays there") {
  LearningRateSchedule s = make(LearningRateSchedule::Kind::Cosine);
  // progress 1/4 at step 35: 0.1 + 0.9 (1 + cos(pi / 4)) / 2
  CHECK(s.lr(35) == doctest::Approx(0.1 + 0.45 * (1.0 + std::cos(std::numbers::pi / 4))));
  CHECK(s.lr(60) == doctest::Approx(0.55));  // halfway
  CHECK(s.lr(109) == doctest::Approx(0.1 + 0.45 * (1.0 + std::cos(std::numbers::pi * 99 / 100))));
  CHECK(s.lr(110) == doctest::Approx(0.1));
  CHECK(s.lr(5000) == doctest::Approx(0.1));
  for (int64_t step = 10; step < 110; ++step) CHECK(s.lr(step + 1) <= s.lr(step));
}

TEST_CASE("linear decay is a straight line from the peak to min_lr") {
  LearningRateSchedule s = make(LearningRateSchedule::Kind::Linear);
  CHECK(s.lr(35) == doctest::Approx(1.0 - 0.9 * 0.25));
  CHECK(s.lr(85) == doctest::Approx(1.0 - 0.9 * 0.75));
  CHECK(s.lr(110) == doctest::Approx(0.1));
  CHECK(s.lr(111) == doctest::Approx(0.1));
}

TEST_CASE("constant keeps the peak after warmup; no warmup starts at the peak") {
  LearningRateSchedule s = make(LearningRateSchedule::Kind::Constant);
  CHECK(s.lr(10) == 1.0);
  CHECK(s.lr(1000000) == 1.0);
  LearningRateSchedule cold;
  cold.kind = LearningRateSchedule::Kind::Cosine;
  cold.total_steps = 4;
  cold.peak_lr = 2.0;
  cold.validate();
  CHECK(cold.lr(0) == 2.0);
  CHECK(cold.lr(2) == doctest::Approx(1.0));
  CHECK(cold.lr(4) == 0.0);
}

TEST_CASE("bad schedules name the field") {
  LearningRateSchedule s = make(LearningRateSchedule::Kind::Cosine);
  s.total_steps = 10;
  CHECK_THROWS_WITH_AS(s.validate(), doctest::Contains("total_steps (10) above warmup_steps (10)"), Error);
  s = make(LearningRateSchedule::Kind::Linear);
  s.min_lr = 2.0;
  CHECK_THROWS_WITH_AS(s.validate(), doctest::Contains("min_lr 2 must lie in [0, peak_lr = 1]"), Error);
  s = make(LearningRateSchedule::Kind::Constant);
  s.warmup_steps = -1;
  CHECK_THROWS_WITH_AS(s.validate(), doctest::Contains("warmup_steps -1 is negative"), Error);
  CHECK_THROWS_WITH_AS(s.lr(-3), doctest::Contains("step -3 is negative"), Error);
  CHECK(optim::parse_schedule_kind("cosine") == LearningRateSchedule::Kind::Cosine);
  CHECK_THROWS_WITH_AS(optim::parse_schedule_kind("step"), doctest::Contains("unknown learning-rate schedule 'step'"),
                       Error);
}
