/* compute probe/reliability: the PROBE reliability of the whole system, scored by
   pair_style probe/mace every N steps. */

#ifndef LMP_COMPUTE_PROBE_RELIABILITY_H
#define LMP_COMPUTE_PROBE_RELIABILITY_H

#include "compute.h"

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

  int every;    // score every this many steps (read by pair_style probe/mace)

 private:
  class PairProbeMace *pair;
  int nmax;
  double *importance;
  void check_scored(const char *what);
};

}    // namespace LAMMPS_NS

#endif
