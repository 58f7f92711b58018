/* pair_style probe/mace: MACE forces from a probe-md fused TorchScript file, plus the PROBE
   reliability score on the steps compute probe/reliability asks for. */

#ifndef LMP_PAIR_PROBE_MACE_H
#define LMP_PAIR_PROBE_MACE_H

#include "pair.h"
#include "phase_timer.h"

#include <cstdint>
#include <memory>
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
  void finish() override;    // `timing yes`: the phases' wall time since the last report

  // Halo exchange of per-layer node features (forward) and of their gradients (reverse).
  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;

  // State of the last scoring step, read by compute probe/reliability.
  bigint scored_step;                 // -1 until a step was scored
  double probability;                 // calibrated P(MLIP reliable)
  double logit;                       // calibrated logit (probability = sigmoid(logit))
  double predicted_error[3];          // lower, median, upper (80 %), criterion units; NaN if absent
  std::vector<double> importance;     // per local atom at scored_step, 1 = average atom
  std::vector<double> type_atomic_number;  // [ntypes+1] Z of each type's pair_coeff element

 protected:
  // The torch state (module, device, the step's tensors) is defined in pair_probe_mace.cpp only:
  // files that include this header, such as compute probe/reliability, compile without torch.
  struct Impl;
  std::unique_ptr<Impl> impl;
  struct StagedPass;                       // tensors of one layer-by-layer pass (exchange yes)

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
  std::vector<int> hop, node_of_atom, atom_of_node;  // whole-graph path
  std::vector<int64_t> senders, receivers;
  std::vector<double> edge_vectors;        // [nedges * 3], staged path
  std::vector<double> mlip_forces;         // [nall * 3] this pair's forces per row, scoring steps
  PhaseTimer timer;                        // enabled by `timing yes`

  void allocate();
  std::string parse_settings(int narg, char **arg);
  void choose_threads_and_device(const std::string &device_name);
  void load_model();
  void read_model_metadata();
  void choose_exchange();
  bool is_scoring_step() const;
  int64_t species_of_atom(int i) const;

  // Both add forces to atom->f (ghost rows included) and leave in impl the local node
  // energies and, on scoring steps, the local atoms' node features (mlip_forces: this pair's
  // forces per row, read by head_terms_of_local_atoms once their ghost parts are summed back).
  void compute_whole_graph(bool scoring);
  void build_whole_graph();
  void add_node_forces(const double *forces);
  void compute_staged(bool scoring);
  void exchange_on_empty_rank();
  void build_local_edges();
  void staged_inputs(StagedPass &pass);
  void staged_forward(StagedPass &pass);
  void staged_energy(StagedPass &pass);
  void staged_backward(StagedPass &pass);
  void staged_edge_forces(StagedPass &pass);
  void add_edge_forces(const double *edge_grad);
  void head_terms_of_local_atoms(int nlocal);
  void exchange_rows(double *rows, int width, bool forward);

  void tally_energies(bool scoring);
  void pool_and_score(int nlocal);
};

}    // namespace LAMMPS_NS

#endif
