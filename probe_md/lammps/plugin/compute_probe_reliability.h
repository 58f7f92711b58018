/* compute probe/reliability: the PROBE reliability of the whole system, scored by
   pair_style probe/mace every N steps. */

#ifndef LMP_COMPUTE_PROBE_RELIABILITY_H
#define LMP_COMPUTE_PROBE_RELIABILITY_H

#include "compute.h"

#include <string>

namespace LAMMPS_NS {

class ComputeProbeReliability : public Compute {
 public:
  ComputeProbeReliability(class LAMMPS *, int, char **);
  ~ComputeProbeReliability() override;
  void init() override;
  double compute_scalar() override;
  void compute_vector() override;
  void compute_peratom() override;
  double memory_usage() override;

  // Score every this many steps (read by pair_style probe/mace on every step): a number, or
  // an equal-style/internal variable (`every v_name`) that a front end changes mid-run.
  int current_every();

 private:
  class PairProbeMace *pair;
  int every;
  std::string every_variable;    // "" = fixed `every`
  int every_ivar;
  int nmax;
  double *importance;
  void check_scored(const char *what);
};

}    // namespace LAMMPS_NS

#endif
