/* Wall time of pair_style probe/mace's phases, on request (`timing yes`). Before each phase
   change the `synchronize` hook runs (the pair style drains the GPU's queue there), so work
   queued on a device is charged to the phase that queued it, at the price of those waits. */

#ifndef LMP_PROBE_MD_PHASE_TIMER_H
#define LMP_PROBE_MD_PHASE_TIMER_H

#include <array>
#include <chrono>
#include <functional>

namespace LAMMPS_NS {

class PhaseTimer {
 public:
  enum Phase { IDLE = -1, NEIGHBORS, INPUTS, FORWARD, EXCHANGE, BACKWARD, EDGE_GRADS, SCATTER, HEAD, NPHASES };

  bool enabled = false;
  std::function<void()> synchronize;
  std::array<double, NPHASES> seconds{};
  long steps = 0, scored_steps = 0;

  static const char *name(int phase)
  {
    static const char *names[NPHASES] = {"neighbors", "inputs", "forward", "exchange",
                                         "backward", "edge_grads", "scatter", "head"};
    return names[phase];
  }

  /* Charges the time since the last change to the current phase, enters `next`, and returns
     the phase it left (a no-op returning IDLE when disabled). */
  Phase enter(Phase next)
  {
    if (!enabled) return IDLE;
    if (synchronize) synchronize();
    const Clock::time_point now = Clock::now();
    if (current != IDLE) seconds[current] += std::chrono::duration<double>(now - since).count();
    const Phase left = current;
    current = next;
    since = now;
    return left;
  }

  void reset()
  {
    seconds.fill(0.0);
    steps = scored_steps = 0;
    current = IDLE;
  }

 private:
  using Clock = std::chrono::steady_clock;
  Phase current = IDLE;
  Clock::time_point since;
};

}    // namespace LAMMPS_NS

#endif
