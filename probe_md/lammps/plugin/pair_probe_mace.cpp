/* pair_style probe/mace <fused.pt> [device cpu|cuda]
   pair_coeff * * <element of type 1> <element of type 2> ...

   The fused file (written by `probe-md export`) holds a MACE model and a PROBE head. The
   graph is built over local and ghost atoms; ghosts are real periodic images, so no edge
   needs a shift. Only local atoms' energies are summed, forces on ghosts are returned too
   and LAMMPS adds them to their owners (reverse communication, newton_pair on). With ghosts
   out to num_layers * r_max, every local atom sees its full receptive field. */

#include "pair_probe_mace.h"

#include "atom.h"
#include "comm.h"
#include "compute_probe_reliability.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "modify.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"

#include <torch/cuda.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <unordered_map>

using namespace LAMMPS_NS;

static const char FUSED_FORMAT[] = "probe_md.fused/1";

PairProbeMace::PairProbeMace(LAMMPS *lmp) :
    Pair(lmp), scored_step(-1), probability(0.0), logit(0.0), score_every(0),
    device(torch::kCPU), r_max(0.0), num_layers(0), num_heads(0), value_dim(0)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  ghostneigh = 1;    // MACE's message passing needs the neighbours of ghost atoms too
  no_virial_fdotr_compute = 0;
  centroidstressflag = CENTROID_NOTAVAIL;
}

PairProbeMace::~PairProbeMace()
{
  if (copymode) return;
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    memory->destroy(cutghost);
  }
}

void PairProbeMace::allocate()
{
  allocated = 1;
  int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  memory->create(cutghost, n, n, "pair:cutghost");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) setflag[i][j] = 0;
  type_to_species.assign(n, -1);
}

void PairProbeMace::settings(int narg, char **arg)
{
  if (narg != 1 && narg != 3)
    error->all(FLERR, "Illegal pair_style probe/mace command: expected `pair_style probe/mace "
               "<fused.pt> [device cpu|cuda]`");
  model_file = arg[0];
  if (narg == 3) {
    if (strcmp(arg[1], "device") != 0)
      error->all(FLERR, "Unknown pair_style probe/mace keyword {}: only `device` is known", arg[1]);
    if (strcmp(arg[2], "cpu") == 0) {
      device = torch::Device(torch::kCPU);
    } else if (strcmp(arg[2], "cuda") == 0) {
      if (!torch::cuda::is_available())
        error->all(FLERR, "pair_style probe/mace device cuda: this PyTorch build sees no CUDA "
                   "device; use `device cpu`");
      // One GPU per rank, assigned round-robin within the node.
      int ngpu = static_cast<int>(torch::cuda::device_count());
      device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(comm->me % ngpu));
    } else {
      error->all(FLERR, "pair_style probe/mace device {}: use cpu or cuda", arg[2]);
    }
  }

  // Validate the file on load, not mid-run: every field the engine relies on is checked here.
  FILE *probe = fopen(model_file.c_str(), "rb");
  if (!probe)
    error->all(FLERR, "pair_style probe/mace: model file {} does not exist or is unreadable; "
               "write one with `probe-md export`", model_file);
  fclose(probe);
  try {
    model = torch::jit::load(model_file, device);
  } catch (const std::exception &e) {
    std::string why = e.what();
    why = why.substr(0, why.find('\n'));
    error->all(FLERR, "pair_style probe/mace: model file {} is corrupt or not TorchScript ({}); "
               "re-export it with `probe-md export`", model_file, why);
  }
  model.eval();
  if (!model.hasattr("probe_md_format") ||
      model.attr("probe_md_format").toStringRef() != FUSED_FORMAT)
    error->all(FLERR, "pair_style probe/mace: {} is not a probe-md fused model ({}); write one "
               "with `probe-md export --model M --head H -o fused.pt`", model_file, FUSED_FORMAT);
  r_max = model.attr("r_max").toDouble();
  num_layers = static_cast<int>(model.attr("num_layers").toInt());
  num_heads = static_cast<int>(model.attr("num_heads").toInt());
  value_dim = static_cast<int>(model.attr("value_dim").toInt());
  std::string dtype = model.attr("model_dtype").toStringRef();
  if (dtype != "float32" && dtype != "float64")
    error->all(FLERR, "pair_style probe/mace: model file {} has dtype {}; only float32 and "
               "float64 MACE models are supported", model_file, dtype);
  species.clear();
  for (const auto &s : model.attr("species").toListRef()) species.push_back(s.toStringRef());
  if (r_max <= 0.0 || num_layers < 1 || species.empty())
    error->all(FLERR, "pair_style probe/mace: model file {} has invalid metadata (r_max {}, "
               "num_layers {}, {} species)", model_file, r_max, num_layers, species.size());
  if (comm->me == 0)
    utils::logmesg(lmp, "probe/mace: {} ({}; species {}; r_max {} A x {} layers; head {}x{})\n",
                   model_file, dtype, utils::join_words(species, " "), r_max,
                   num_layers, num_heads, value_dim);
}

void PairProbeMace::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  int ntypes = atom->ntypes;
  if (narg < 3 || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "Incorrect args for pair_coeff: use `pair_coeff * * <element per type>`");
  if (narg != 2 + ntypes)
    error->all(FLERR, "pair_coeff * * for pair_style probe/mace needs one element per atom type: "
               "{} types, {} elements given", ntypes, narg - 2);
  for (int itype = 1; itype <= ntypes; itype++) {
    std::string element = arg[1 + itype];
    int64_t index = -1;
    for (size_t k = 0; k < species.size(); k++)
      if (species[k] == element) index = static_cast<int64_t>(k);
    if (index < 0)
      error->all(FLERR, "pair_coeff: LAMMPS type {} is mapped to {}, but model file {} was "
                 "exported for species [{}]", itype, element, model_file,
                 utils::join_words(species, ", "));
    type_to_species[itype] = index;
  }
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) setflag[i][j] = 1;
}

void PairProbeMace::init_style()
{
  if (force->newton_pair == 0)
    error->all(FLERR, "pair_style probe/mace requires newton pair on (ghost forces are "
               "reverse-communicated to their owners)");
  neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);
  // Each of the num_layers message-passing steps reaches r_max further; the skin covers
  // atoms that move in before the next reneighbouring.
  double needed = num_layers * r_max + neighbor->skin;
  if (comm->cutghostuser < needed) comm->cutghostuser = needed;

  score_every = 0;
  for (auto *compute : modify->get_compute_by_style("probe/reliability")) {
    auto *reliability = dynamic_cast<ComputeProbeReliability *>(compute);
    if (reliability && (score_every == 0 || reliability->every < score_every))
      score_every = reliability->every;
  }
}

double PairProbeMace::init_one(int i, int j)
{
  if (setflag[i][j] == 0)
    error->all(FLERR, "pair_coeff * * must be set for pair_style probe/mace before the run");
  cutghost[i][j] = cutghost[j][i] = r_max;
  return r_max;
}

bool PairProbeMace::is_scoring_step() const
{
  if (score_every <= 0) return false;
  bigint step = update->ntimestep;
  // Setup and the last step of a run are scored too: thermo always prints them.
  return (step % score_every == 0) || update->setupflag || step == update->laststep;
}

void PairProbeMace::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  if (vflag_atom)
    error->all(FLERR, "pair_style probe/mace does not compute per-atom virials (compute "
               "stress/atom or centroid/stress/atom)");

  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const bool scoring = is_scoring_step();
  double **x = atom->x;
  double **f = atom->f;
  int *type = atom->type;

  torch::Tensor scores, values;
  if (nlocal > 0) {
    // Graph over local and ghost atoms from the full neighbour list (ghosts included), pruned
    // to what the local energies depend on: atoms within num_layers hops of a local atom, and
    // only edges into atoms within num_layers - 1 hops (an atom num_layers hops away only
    // contributes its embedding). Local atoms keep indices 0..nlocal-1.
    const double cutsq_model = r_max * r_max;
    auto within_cutoff = [&](int i, int j) {
      const double dx = x[i][0] - x[j][0], dy = x[i][1] - x[j][1], dz = x[i][2] - x[j][2];
      return dx * dx + dy * dy + dz * dz < cutsq_model;
    };
    hop.assign(nall, -1);
    node_of_atom.assign(nall, -1);
    atom_of_node.clear();
    for (int i = 0; i < nlocal; i++) {
      hop[i] = 0;
      node_of_atom[i] = i;
      atom_of_node.push_back(i);
    }
    senders.clear();
    receivers.clear();
    for (size_t k = 0; k < atom_of_node.size(); k++) {    // breadth-first: grows while iterating
      const int i = atom_of_node[k];
      if (hop[i] >= num_layers) continue;
      const int *jlist = list->firstneigh[i];
      const int jnum = list->numneigh[i];
      for (int jj = 0; jj < jnum; jj++) {
        const int j = jlist[jj] & NEIGHMASK;
        if (!within_cutoff(i, j)) continue;
        if (hop[j] < 0) {
          hop[j] = hop[i] + 1;
          node_of_atom[j] = static_cast<int>(atom_of_node.size());
          atom_of_node.push_back(j);
        }
        senders.push_back(node_of_atom[j]);
        receivers.push_back(static_cast<int64_t>(k));
      }
    }
    const int64_t nnodes = static_cast<int64_t>(atom_of_node.size());
    const int64_t nedges = static_cast<int64_t>(senders.size());
    auto i64 = torch::TensorOptions().dtype(torch::kInt64);
    auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
    torch::Tensor positions = torch::empty({nnodes, 3}, f64);
    torch::Tensor species_index = torch::empty({nnodes}, i64);
    double *pos = positions.data_ptr<double>();
    int64_t *spec = species_index.data_ptr<int64_t>();
    for (int64_t k = 0; k < nnodes; k++) {
      const int i = atom_of_node[k];
      pos[3 * k] = x[i][0];
      pos[3 * k + 1] = x[i][1];
      pos[3 * k + 2] = x[i][2];
      spec[k] = type_to_species[type[i]];
      if (spec[k] < 0)
        error->one(FLERR, "pair_style probe/mace: atom type {} has no element in pair_coeff",
                   type[i]);
    }
    torch::Tensor edge_index = torch::empty({2, nedges}, i64);
    std::memcpy(edge_index[0].data_ptr<int64_t>(), senders.data(), nedges * sizeof(int64_t));
    std::memcpy(edge_index[1].data_ptr<int64_t>(), receivers.data(), nedges * sizeof(int64_t));
    std::vector<torch::jit::IValue> inputs{positions.to(device), species_index.to(device),
                                           edge_index.to(device), static_cast<int64_t>(nlocal)};

    torch::Tensor node_energy, forces;
    try {
      if (scoring) {
        auto out = model.get_method("forward_with_head")(inputs).toTuple();
        node_energy = out->elements()[0].toTensor();
        forces = out->elements()[1].toTensor();
        scores = out->elements()[2].toTensor().to(torch::kCPU).contiguous();
        values = out->elements()[3].toTensor().to(torch::kCPU).contiguous();
      } else {
        auto out = model.forward(inputs).toTuple();
        node_energy = out->elements()[0].toTensor();
        forces = out->elements()[1].toTensor();
      }
    } catch (const std::exception &e) {
      std::string why = e.what();
      error->one(FLERR, "pair_style probe/mace: model evaluation failed: {}",
                 why.substr(0, why.find('\n')));
    }
    node_energy = node_energy.to(torch::kCPU).contiguous();
    forces = forces.to(torch::kCPU).contiguous();
    auto energy_of = node_energy.accessor<double, 1>();
    auto force_of = forces.accessor<double, 2>();

    for (int64_t k = 0; k < nnodes; k++) {
      const int i = atom_of_node[k];
      f[i][0] += force_of[k][0];
      f[i][1] += force_of[k][1];
      f[i][2] += force_of[k][2];
    }
    if (eflag_global)
      for (int i = 0; i < nlocal; i++) eng_vdwl += energy_of[i];
    if (eflag_atom)
      for (int i = 0; i < nlocal; i++) eatom[i] += energy_of[i];
  }
  // Ghost forces exist now, before reverse communication: the f.r sum is the full virial.
  if (vflag_fdotr) virial_fdotr_compute();

  // Every rank takes part in the reductions, also when it owns no atoms.
  if (scoring) pool_and_score(scores, values, nlocal);
}

void PairProbeMace::pool_and_score(const torch::Tensor &scores, const torch::Tensor &values,
                                   int nlocal)
{
  const int H = num_heads, D = value_dim;
  const double *s = nlocal > 0 ? scores.data_ptr<double>() : nullptr;
  const double *v = nlocal > 0 ? values.data_ptr<double>() : nullptr;

  // Softmax pooling split into reductions (identical on any rank count): the global max per
  // head first, so that every exp() below is <= 1 and cannot overflow, then one sum of
  // [sum exp(s - M) | sum exp(s - M) * v].
  std::vector<double> local_max(H, -std::numeric_limits<double>::infinity()), max_score(H);
  for (int i = 0; i < nlocal; i++)
    for (int h = 0; h < H; h++) local_max[h] = std::max(local_max[h], s[i * H + h]);
  MPI_Allreduce(local_max.data(), max_score.data(), H, MPI_DOUBLE, MPI_MAX, world);

  std::vector<double> local_sums(H + H * D, 0.0), sums(H + H * D);
  for (int i = 0; i < nlocal; i++)
    for (int h = 0; h < H; h++) {
      const double w = std::exp(s[i * H + h] - max_score[h]);
      local_sums[h] += w;
      for (int d = 0; d < D; d++) local_sums[H + h * D + d] += w * v[(i * H + h) * D + d];
    }
  MPI_Allreduce(local_sums.data(), sums.data(), H + H * D, MPI_DOUBLE, MPI_SUM, world);

  torch::Tensor pooled = torch::empty({1, H * D}, torch::TensorOptions().dtype(torch::kFloat64));
  double *p = pooled.data_ptr<double>();
  for (int h = 0; h < H; h++)
    for (int d = 0; d < D; d++) p[h * D + d] = sums[H + h * D + d] / sums[h];
  try {
    torch::Tensor out = model.get_method("readout")({pooled.to(device)}).toTensor();
    logit = out.to(torch::kCPU).item<double>();
  } catch (const std::exception &e) {
    std::string why = e.what();
    error->one(FLERR, "pair_style probe/mace: head readout failed: {}",
               why.substr(0, why.find('\n')));
  }
  probability = 1.0 / (1.0 + std::exp(-logit));

  // Importance: head-mean attention times the total atom count (1 = an average atom).
  const double natoms = static_cast<double>(atom->natoms);
  importance.assign(nlocal, 0.0);
  for (int i = 0; i < nlocal; i++) {
    double mean_attention = 0.0;
    for (int h = 0; h < H; h++) mean_attention += std::exp(s[i * H + h] - max_score[h]) / sums[h];
    importance[i] = mean_attention / H * natoms;
  }
  scored_step = update->ntimestep;
}

double PairProbeMace::memory_usage()
{
  return Pair::memory_usage() + importance.capacity() * sizeof(double);
}
