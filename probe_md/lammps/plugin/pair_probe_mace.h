/* pair_style probe/mace: MACE forces from a probe-md fused TorchScript file, plus the PROBE
   reliability score on the steps compute probe/reliability asks for. */

#ifndef LMP_PAIR_PROBE_MACE_H
#define LMP_PAIR_PROBE_MACE_H

#include "pair.h"

#include <torch/script.h>

#include <string>
#include <vector>

namespace LAMMPS_NS {

class PairProbeMace : public Pair {
 public:
  PairProbeMace(class LAMMPS *);
  ~PairProbeMace() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  double memory_usage() override;

  // State of the last scoring step, read by compute probe/reliability.
  bigint scored_step;                 // -1 until a step was scored
  double probability;                 // calibrated P(MLIP reliable)
  double logit;                       // calibrated logit (probability = sigmoid(logit))
  std::vector<double> importance;     // per local atom at scored_step, 1 = average atom
  int score_every;                    // 0 = never score (no compute probe/reliability)

 protected:
  torch::jit::script::Module model;
  torch::Device device;
  std::string model_file;
  double r_max;
  int num_layers, num_heads, value_dim;
  std::vector<std::string> species;
  std::vector<int64_t> type_to_species;    // [ntypes+1], -1 = unmapped
  // Graph buffers, reused between steps.
  std::vector<int> hop, node_of_atom, atom_of_node;
  std::vector<int64_t> senders, receivers;

  void allocate();
  bool is_scoring_step() const;
  void pool_and_score(const torch::Tensor &scores, const torch::Tensor &values, int nlocal);
};

}    // namespace LAMMPS_NS

#endif
