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
  void *extract(const char *, int &) override;

  // Halo exchange of per-layer node features (forward) and of their gradients (reverse).
  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;

  // State of the last scoring step, read by compute probe/reliability.
  bigint scored_step;                 // -1 until a step was scored
  double probability;                 // calibrated P(MLIP reliable)
  double logit;                       // calibrated logit (probability = sigmoid(logit))
  std::vector<double> importance;     // per local atom at scored_step, 1 = average atom
  std::vector<double> type_atomic_number;  // [ntypes+1] Z of each type's pair_coeff element

 protected:
  torch::jit::script::Module model;
  torch::Device device;
  std::string model_file;
  double r_max;
  int num_layers, num_heads, value_dim;
  std::vector<std::string> species;
  std::vector<int64_t> atomic_numbers;     // Z of each species
  std::vector<class ComputeProbeReliability *> reliability_computes;  // who asks for scores
  std::vector<int64_t> type_to_species;    // [ntypes+1], -1 = unmapped
  // exchange yes: every layer on local atoms, ghost features from their owners between
  // layers, ghost cutoff r_max. exchange no: whole graph out to num_layers * r_max.
  bool exchange;
  int exchange_request;                    // -1 = default (yes when the model is staged)
  std::vector<int64_t> exchange_widths;    // columns exchanged before each layer
  double *comm_rows;                       // [nall, comm_width] rows being exchanged
  int comm_width;
  // Graph buffers, reused between steps.
  std::vector<int> hop, node_of_atom, atom_of_node;
  std::vector<int64_t> senders, receivers;
  std::vector<double> edge_vectors;        // [nedges * 3], staged path

  void allocate();
  void choose_threads_and_device(const char *device_name);
  bool is_scoring_step() const;
  // Both add forces to atom->f (ghost rows included) and return local node energies and,
  // on scoring steps, the head's per-atom terms.
  void compute_whole_graph(bool scoring, torch::Tensor &node_energy, torch::Tensor &scores,
                           torch::Tensor &values);
  void compute_staged(bool scoring, torch::Tensor &node_energy, torch::Tensor &scores,
                      torch::Tensor &values);
  void exchange_rows(torch::Tensor &rows, bool forward);
  void pool_and_score(const torch::Tensor &scores, const torch::Tensor &values, int nlocal);
};

}    // namespace LAMMPS_NS

#endif
