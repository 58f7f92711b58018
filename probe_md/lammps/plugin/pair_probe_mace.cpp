/* pair_style probe/mace <fused.pt> [device cpu|cuda] [exchange yes|no] [timing yes|no]
   pair_coeff * * <element of type 1> <element of type 2> ...

   The fused file (written by `probe-md export`) holds a MACE model and a PROBE head. Ghosts
   are real periodic images, so no edge needs a shift. Only local atoms' energies are summed;
   forces on ghosts are returned too and LAMMPS adds them to their owners (reverse
   communication, newton_pair on).

   exchange yes (default for staged models): every MACE layer runs on local atoms only. Before
   layer k > 0 the features local atoms send along edges are forward-communicated to their
   ghost images; in the backward pass the gradients on those ghost rows are reverse-
   communicated to the owners before the chain continues into layer k - 1. Ghost cutoff r_max.
   exchange no: one graph over local atoms and every ghost within num_layers * r_max, so each
   local atom sees its whole receptive field; the reference the exchange is tested against. */

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

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include <dlfcn.h>
#include <link.h>
#include <malloc.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <thread>

using namespace LAMMPS_NS;

static const char FUSED_FORMAT[] = "probe_md.fused/3";

/* The torch side of the pair style: the model, its device, and the outputs of the step being
   computed (local atoms' energies and, when scoring, the head's per-atom scores and values). */
struct PairProbeMace::Impl {
  torch::jit::script::Module model;
  torch::Device device{torch::kCPU};
  torch::Tensor node_energy, scores, values;
  torch::Tensor node_feats;    // scoring steps: local atoms' node features, read by head_terms

  torch::jit::IValue call(const char *method, std::vector<torch::jit::IValue> args)
  {
    return model.get_method(method)(std::move(args));
  }
};

/* One energy/force pass of a staged model through its layers (exchange yes). Each layer's
   inputs are leaves of the layer's own autograd graph, so the backward pass can stop between
   layers for the reverse exchange of the gradients on ghost rows. */
struct PairProbeMace::StagedPass {
  torch::Tensor vectors;                   // [nedges, 3] edge vectors x_i - x_j (grad wanted)
  torch::Tensor species, species_local;    // [nall], [nlocal] species indices
  torch::Tensor edge_index;                // [2, nedges] senders, receivers
  std::vector<torch::Tensor> edges;        // stage_edges outputs, functions of vectors
  std::vector<torch::Tensor> edge_leaves;  // the same detached: what the layers see
  c10::List<torch::Tensor> edge_list;
  torch::Tensor sent0;                     // layer 0's messages (embedding only: no grad)
  torch::Tensor node_feats;                // local atoms' features entering the next layer
  // Per layer: input features (leaf), what local atoms send, what every atom sends (leaf,
  // ghost rows from the owners), output features, energy term.
  std::vector<torch::Tensor> feats_in, sent_local, sent_all, feats_out, energies;
  std::vector<torch::Tensor> energy_grads;  // dE/d(energies[layer])
  std::vector<torch::Tensor> edge_grads;    // dE/d(edge_leaves[k]), summed over layers
};

PairProbeMace::PairProbeMace(LAMMPS *lmp) :
    Pair(lmp), scored_step(-1), probability(0.0), logit(0.0), impl(new Impl),
    r_max(0.0), num_layers(0), num_heads(0), value_dim(0),
    exchange(true), exchange_request(-1), comm_rows(nullptr), comm_width(0)
{
  std::fill(predicted_error, predicted_error + 3, std::numeric_limits<double>::quiet_NaN());
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
  type_atomic_number.assign(n, 0.0);
}

void PairProbeMace::settings(int narg, char **arg)
{
  const std::string device_name = parse_settings(narg, arg);
  choose_threads_and_device(device_name);
  load_model();
  read_model_metadata();
  choose_exchange();
  if (comm->me == 0)
    utils::logmesg(lmp, "probe/mace: {} ({}; species {}; r_max {} A x {} layers; head {}x{}); "
                   "exchange {}; device {}; {} torch thread(s) per rank\n", model_file,
                   impl->model.attr("model_dtype").toStringRef(), utils::join_words(species, " "),
                   r_max, num_layers, num_heads, value_dim,
                   exchange ? "yes (ghost cutoff r_max)" : "no (ghost cutoff layers x r_max)",
                   impl->device.str(), at::get_num_threads());
}

/* Reads `<file> [device cpu|cuda] [exchange yes|no] [timing yes|no]`; returns the device name. */
std::string PairProbeMace::parse_settings(int narg, char **arg)
{
  if (narg < 1 || narg % 2 != 1)
    error->all(FLERR, "Illegal pair_style probe/mace command: expected `pair_style probe/mace "
               "<fused.pt> [device cpu|cuda] [exchange yes|no] [timing yes|no]`");
  model_file = arg[0];
  std::string device_name = "cpu";
  exchange_request = -1;
  timer.enabled = false;
  for (int iarg = 1; iarg < narg; iarg += 2) {
    if (strcmp(arg[iarg], "device") == 0) {
      device_name = arg[iarg + 1];
    } else if (strcmp(arg[iarg], "exchange") == 0) {
      if (strcmp(arg[iarg + 1], "yes") == 0)
        exchange_request = 1;
      else if (strcmp(arg[iarg + 1], "no") == 0)
        exchange_request = 0;
      else
        error->all(FLERR, "pair_style probe/mace exchange {}: use yes or no", arg[iarg + 1]);
    } else if (strcmp(arg[iarg], "timing") == 0) {
      timer.enabled = utils::logical(FLERR, arg[iarg + 1], false, lmp) == 1;
    } else {
      error->all(FLERR, "Unknown pair_style probe/mace keyword {}: only `device`, `exchange` "
                 "and `timing` are known", arg[iarg]);
    }
  }
  return device_name;
}

/* Validates the file on load, not mid-run: every field the engine relies on is checked here
   and in read_model_metadata(). */
void PairProbeMace::load_model()
{
  FILE *probe = fopen(model_file.c_str(), "rb");
  if (!probe)
    error->all(FLERR, "pair_style probe/mace: model file {} does not exist or is unreadable; "
               "write one with `probe-md export`", model_file);
  fclose(probe);
  try {
    impl->model = torch::jit::load(model_file, impl->device);
  } catch (const std::exception &e) {
    std::string why = e.what();
    why = why.substr(0, why.find('\n'));
    error->all(FLERR, "pair_style probe/mace: model file {} is corrupt or not TorchScript ({}); "
               "re-export it with `probe-md export`", model_file, why);
  }
  impl->model.eval();
  if (!impl->model.hasattr("probe_md_format") ||
      impl->model.attr("probe_md_format").toStringRef() != FUSED_FORMAT)
    error->all(FLERR, "pair_style probe/mace: {} is not a probe-md fused model ({}); write one "
               "with `probe-md export --model M --head H -o fused.pt`", model_file, FUSED_FORMAT);
}

void PairProbeMace::read_model_metadata()
{
  const auto &model = impl->model;
  r_max = model.attr("r_max").toDouble();
  num_layers = static_cast<int>(model.attr("num_layers").toInt());
  num_heads = static_cast<int>(model.attr("num_heads").toInt());
  value_dim = static_cast<int>(model.attr("value_dim").toInt());
  const std::string dtype = model.attr("model_dtype").toStringRef();
  if (dtype != "float32" && dtype != "float64")
    error->all(FLERR, "pair_style probe/mace: model file {} has dtype {}; only float32 and "
               "float64 MACE models are supported", model_file, dtype);
  species.clear();
  for (const auto &s : model.attr("species").toListRef()) species.push_back(s.toStringRef());
  atomic_numbers.clear();
  for (const auto &z : model.attr("atomic_numbers").toListRef()) atomic_numbers.push_back(z.toInt());
  if (r_max <= 0.0 || num_layers < 1 || species.empty() || atomic_numbers.size() != species.size())
    error->all(FLERR, "pair_style probe/mace: model file {} has invalid metadata (r_max {}, "
               "num_layers {}, {} species)", model_file, r_max, num_layers, species.size());
}

/* exchange yes needs a model with per-layer stages; it sets the halo-exchange sizes. */
void PairProbeMace::choose_exchange()
{
  const bool staged = impl->model.find_method("stage_layer").has_value();
  if (exchange_request == 1 && !staged)
    error->all(FLERR, "pair_style probe/mace exchange yes: model file {} has no per-layer "
               "stages (re-export it with `probe-md export`, or use `exchange no`)", model_file);
  exchange = staged && exchange_request != 0;
  exchange_widths.clear();
  comm_forward = comm_reverse = 0;
  if (exchange) {
    for (const auto &w : impl->model.attr("exchange_widths").toListRef())
      exchange_widths.push_back(w.toInt());
    if (static_cast<int>(exchange_widths.size()) != num_layers)
      error->all(FLERR, "pair_style probe/mace: model file {} has {} exchange widths for {} "
                 "layers; re-export it", model_file, exchange_widths.size(), num_layers);
    // Layer 0 sends the species embedding, which ghosts compute themselves: no exchange.
    for (int layer = 1; layer < num_layers; layer++)
      comm_forward = std::max(comm_forward, static_cast<int>(exchange_widths[layer]));
  }
  // Scoring steps also sum ghost rows of the MLIP's forces back to their owners (3 columns).
  comm_reverse = std::max(comm_forward, 3);
  // The whole-graph path needs the neighbours of ghost atoms; the staged one does not.
  ghostneigh = exchange ? 0 : 1;
}

/* Path of libtorch_cpu if it was loaded after liblammps, else "". liblammps exports its
   bundled reference BLAS (dgemm_, ...); a libtorch loaded after it binds its matrix products
   to those instead of its own MKL: float64 matmul 3.6x, a MACE step 1.5x slower (measured). */
static std::string torch_bound_to_lammps_blas()
{
  struct Order {
    int index = 0, lammps = -1, torch = -1;
    std::string torch_path;
  } order;
  dl_iterate_phdr(
      [](struct dl_phdr_info *info, size_t, void *data) {
        auto *o = static_cast<Order *>(data);
        const std::string name = info->dlpi_name ? info->dlpi_name : "";
        if (o->lammps < 0 && name.find("liblammps") != std::string::npos) o->lammps = o->index;
        if (o->torch < 0 && name.find("libtorch_cpu") != std::string::npos) {
          o->torch = o->index;
          o->torch_path = name;
        }
        o->index++;
        return 0;
      },
      &order);
  const bool lammps_blas = dlsym(RTLD_DEFAULT, "dgemm_") != nullptr;
  if (lammps_blas && order.lammps >= 0 && order.torch > order.lammps) return order.torch_path;
  return "";
}

/* Every MD step allocates and frees the same large tensors. glibc serves blocks above its
   mmap threshold with fresh mmap()s, whose pages the kernel faults in and zeroes again on
   every step (measured: ~30 % of a 864-atom step, and as much of a bare MACE call). Served
   from the heap and not trimmed, they are reused; the peak memory is the same. */
static void reuse_freed_memory()
{
#ifdef __GLIBC__
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
#endif
}

void PairProbeMace::choose_threads_and_device(const std::string &device_name)
{
  reuse_freed_memory();
  const std::string late_torch = torch_bound_to_lammps_blas();
  if (!late_torch.empty() && comm->me == 0)
    error->warning(FLERR, "probe/mace: libtorch was loaded after liblammps, so torch's matrix "
                   "products run LAMMPS's bundled reference BLAS (about 1.5x slower MACE steps). "
                   "Start LAMMPS with LD_PRELOAD={} (probe-md run and Python scripts that "
                   "import torch before lammps need nothing)", late_torch);

  // Ranks sharing this node: they share its cores and its GPUs.
  MPI_Comm node;
  MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, comm->me, MPI_INFO_NULL, &node);
  int node_rank = 0, node_size = 1;
  MPI_Comm_rank(node, &node_rank);
  MPI_Comm_size(node, &node_size);
  MPI_Comm_free(&node);

  // OMP_NUM_THREADS wins; else the node's cores shared among its ranks (torch's own default,
  // all cores in every rank, oversubscribes the node as soon as there are several ranks).
  int threads = 0;
  const char *omp = std::getenv("OMP_NUM_THREADS");
  if (omp && std::atoi(omp) > 0) threads = std::atoi(omp);
  if (threads <= 0) {
    const int cores = static_cast<int>(std::thread::hardware_concurrency());
    threads = std::max(1, cores / node_size);
  }
  if (at::get_num_threads() != threads) at::set_num_threads(threads);

  if (device_name == "cpu") {
    impl->device = torch::Device(torch::kCPU);
  } else if (device_name == "cuda") {
    if (!torch::cuda::is_available())
      error->all(FLERR, "pair_style probe/mace device cuda: this PyTorch build sees no CUDA "
                 "device; use `device cpu`");
    const int ngpu = static_cast<int>(torch::cuda::device_count());
    impl->device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(node_rank % ngpu));
    const int64_t gpu = impl->device.index();
    timer.synchronize = [gpu]() { torch::cuda::synchronize(gpu); };
  } else {
    error->all(FLERR, "pair_style probe/mace device {}: use cpu or cuda", device_name);
  }
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
    type_atomic_number[itype] = static_cast<double>(atomic_numbers[index]);
  }
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) setflag[i][j] = 1;
}

void PairProbeMace::init_style()
{
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR, "pair_style probe/mace requires units metal (eV, Angstrom), not units {}",
               update->unit_style);
  if (force->newton_pair == 0)
    error->all(FLERR, "pair_style probe/mace requires newton pair on (ghost forces are "
               "reverse-communicated to their owners)");
  // exchange yes: edges into local atoms only. exchange no: the ghosts' neighbours too (out to
  // cutghost + skin); the ghost shell itself comes from the cutoff init_one() returns.
  if (exchange)
    neighbor->add_request(this, NeighConst::REQ_FULL);
  else
    neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);

  reliability_computes.clear();
  for (auto *compute : modify->get_compute_by_style("probe/reliability")) {
    auto *reliability = dynamic_cast<ComputeProbeReliability *>(compute);
    if (reliability) reliability_computes.push_back(reliability);
  }
}

/* The cutoff is the receptive field. exchange yes: r_max, the layers exchange features.
   exchange no: the energy of a local atom depends on atoms num_layers * r_max away, so that is
   the cutoff. Neighbor adds the skin (atoms that move in before the next reneighbouring) and
   Comm takes max(comm_modify cutoff, that) as the ghost cutoff: the user's comm_modify cutoff
   is never changed. A neighbour request with its own cutoff cannot do this in LAMMPS 22 Jul
   2025: it must already fit in the ghost cutoff ("Custom neighbor list cutoff too large for
   communication cutoff"), and one below the pair cutoff is dropped. So with exchange no the
   lists of local atoms reach num_layers * r_max + skin, and the graph keeps pairs within r_max;
   the neighbours of ghosts (REQ_GHOST) only reach cutghost + skin = r_max + skin. */
double PairProbeMace::init_one(int i, int j)
{
  if (setflag[i][j] == 0)
    error->all(FLERR, "pair_coeff * * must be set for pair_style probe/mace before the run");
  cutghost[i][j] = cutghost[j][i] = r_max;
  return exchange ? r_max : num_layers * r_max;
}

bool PairProbeMace::is_scoring_step() const
{
  if (reliability_computes.empty()) return false;
  const bigint step = update->ntimestep;
  // Setup and the last step of a run are scored too: thermo always prints them.
  if (update->setupflag || step == update->laststep) return true;
  // Each compute's interval may be a variable (adaptive checking): asked on every step.
  for (auto *reliability : reliability_computes)
    if (step % reliability->current_every() == 0) return true;
  return false;
}

/* "probe_atomic_number": per type (dim 1), the atomic number of the element pair_coeff maps
   it to, so front ends label atoms by the model's own species map, not by guessing. */
void *PairProbeMace::extract(const char *name, int &dim)
{
  if (strcmp(name, "probe_atomic_number") == 0 && !type_atomic_number.empty()) {
    dim = 1;
    return static_cast<void *>(type_atomic_number.data());
  }
  return nullptr;
}

void PairProbeMace::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  if (vflag_atom)
    error->all(FLERR, "pair_style probe/mace does not compute per-atom virials (compute "
               "stress/atom or centroid/stress/atom)");

  const int nlocal = atom->nlocal;
  const bool scoring = is_scoring_step();
  timer.enter(PhaseTimer::NEIGHBORS);
  timer.steps++;
  timer.scored_steps += scoring;
  // Scoring steps keep this pair's own forces per atom row: the head reads their norm.
  if (scoring)
    mlip_forces.assign(3 * static_cast<size_t>(nlocal + atom->nghost), 0.0);
  else
    mlip_forces.clear();
  try {
    // The staged path runs even on a rank without atoms: its exchanges are collective.
    if (exchange)
      compute_staged(scoring);
    else if (nlocal > 0)
      compute_whole_graph(scoring);
    if (scoring) {
      timer.enter(PhaseTimer::HEAD);
      head_terms_of_local_atoms(nlocal);    // collective, like the pooling below
    }
  } catch (const std::exception &e) {
    std::string why = e.what();
    error->one(FLERR, "pair_style probe/mace: model evaluation failed: {}",
               why.substr(0, why.find('\n')));
  }
  timer.enter(PhaseTimer::SCATTER);
  if (nlocal > 0) tally_energies(scoring);
  // Ghost forces exist now, before reverse communication: the f.r sum is the full virial.
  if (vflag_fdotr) virial_fdotr_compute();

  // Every rank takes part in the reductions, also when it owns no atoms.
  timer.enter(PhaseTimer::HEAD);
  if (scoring) pool_and_score(nlocal);
  impl->node_energy = impl->scores = impl->values = impl->node_feats = torch::Tensor();    // freed until next step
  timer.enter(PhaseTimer::IDLE);
}

/* Local atoms' energies into eng_vdwl / eatom; the head's terms to the CPU when scoring. */
void PairProbeMace::tally_energies(bool scoring)
{
  const int nlocal = atom->nlocal;
  impl->node_energy = impl->node_energy.to(torch::kCPU).contiguous();
  auto energy_of = impl->node_energy.accessor<double, 1>();
  if (eflag_global)
    for (int i = 0; i < nlocal; i++) eng_vdwl += energy_of[i];
  if (eflag_atom)
    for (int i = 0; i < nlocal; i++) eatom[i] += energy_of[i];
  if (scoring) {
    impl->scores = impl->scores.to(torch::kCPU).contiguous();
    impl->values = impl->values.to(torch::kCPU).contiguous();
  }
}

/* Species index of LAMMPS atom i, from its type's pair_coeff element. */
int64_t PairProbeMace::species_of_atom(int i) const
{
  const int64_t s = type_to_species[atom->type[i]];
  if (s < 0)
    error->one(FLERR, "pair_style probe/mace: atom type {} has no element in pair_coeff",
               atom->type[i]);
  return s;
}

static torch::Tensor edge_tensor(const std::vector<int64_t> &senders,
                                 const std::vector<int64_t> &receivers)
{
  const int64_t nedges = static_cast<int64_t>(senders.size());
  torch::Tensor edge_index = torch::empty({2, nedges}, torch::TensorOptions().dtype(torch::kInt64));
  std::memcpy(edge_index[0].data_ptr<int64_t>(), senders.data(), nedges * sizeof(int64_t));
  std::memcpy(edge_index[1].data_ptr<int64_t>(), receivers.data(), nedges * sizeof(int64_t));
  return edge_index;
}

/* Calls visit(j, dx, dy, dz) for every neighbour j of atom i closer than sqrt(cutsq), with
   (dx, dy, dz) = x_i - x_j (mace's edge vector for the edge j -> i). */
template <typename Visit>
static void for_each_neighbour_within(const NeighList *list, double **x, double cutsq, int i,
                                      Visit visit)
{
  const int *jlist = list->firstneigh[i];
  const int jnum = list->numneigh[i];
  for (int jj = 0; jj < jnum; jj++) {
    const int j = jlist[jj] & NEIGHMASK;
    const double dx = x[i][0] - x[j][0], dy = x[i][1] - x[j][1], dz = x[i][2] - x[j][2];
    if (dx * dx + dy * dy + dz * dz < cutsq) visit(j, dx, dy, dz);
  }
}

/* ---------------------------------------------------------------------- exchange no */

void PairProbeMace::compute_whole_graph(bool scoring)
{
  build_whole_graph();
  const int64_t nnodes = static_cast<int64_t>(atom_of_node.size());
  torch::Tensor positions = torch::empty({nnodes, 3}, torch::TensorOptions().dtype(torch::kFloat64));
  torch::Tensor species = torch::empty({nnodes}, torch::TensorOptions().dtype(torch::kInt64));
  double *pos = positions.data_ptr<double>();
  int64_t *spec = species.data_ptr<int64_t>();
  double **x = atom->x;
  for (int64_t k = 0; k < nnodes; k++) {
    const int i = atom_of_node[k];
    pos[3 * k] = x[i][0];
    pos[3 * k + 1] = x[i][1];
    pos[3 * k + 2] = x[i][2];
    spec[k] = species_of_atom(i);
  }
  const torch::Device device = impl->device;
  timer.enter(PhaseTimer::FORWARD);    // the whole graph's forward and backward are one call
  std::vector<torch::jit::IValue> inputs{positions.to(device), species.to(device),
                                         edge_tensor(senders, receivers).to(device),
                                         static_cast<int64_t>(atom->nlocal)};
  torch::Tensor forces;
  if (scoring) {
    auto out = impl->call("forward_with_features", std::move(inputs)).toTuple();
    impl->node_energy = out->elements()[0].toTensor();
    forces = out->elements()[1].toTensor();
    impl->node_feats = out->elements()[2].toTensor();
  } else {
    auto out = impl->model.forward(inputs).toTuple();
    impl->node_energy = out->elements()[0].toTensor();
    forces = out->elements()[1].toTensor();
  }
  timer.enter(PhaseTimer::SCATTER);
  forces = forces.to(torch::kCPU).contiguous();
  add_node_forces(forces.data_ptr<double>());
}

/* Graph over local and ghost atoms from the full neighbour list (ghosts included), pruned to
   what the local energies depend on: atoms within num_layers hops of a local atom, and only
   edges into atoms within num_layers - 1 hops (an atom num_layers hops away only contributes
   its embedding). Local atoms keep indices 0..nlocal-1. */
void PairProbeMace::build_whole_graph()
{
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  double **x = atom->x;
  const double cutsq_model = r_max * r_max;
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
    for_each_neighbour_within(list, x, cutsq_model, i, [&](int j, double, double, double) {
      if (hop[j] < 0) {
        hop[j] = hop[i] + 1;
        node_of_atom[j] = static_cast<int>(atom_of_node.size());
        atom_of_node.push_back(j);
      }
      senders.push_back(node_of_atom[j]);
      receivers.push_back(static_cast<int64_t>(k));
    });
  }
}

/* forces: [nnodes, 3], row k for LAMMPS atom atom_of_node[k] (a ghost's goes to its owner by
   reverse communication). */
void PairProbeMace::add_node_forces(const double *forces)
{
  double **f = atom->f;
  double *own = mlip_forces.empty() ? nullptr : mlip_forces.data();
  const int64_t nnodes = static_cast<int64_t>(atom_of_node.size());
  for (int64_t k = 0; k < nnodes; k++) {
    const int i = atom_of_node[k];
    for (int d = 0; d < 3; d++) {
      f[i][d] += forces[3 * k + d];
      if (own) own[3 * i + d] += forces[3 * k + d];
    }
  }
}

/* ---------------------------------------------------------------------- exchange yes */

static std::vector<torch::Tensor> leaves_of(const std::vector<torch::Tensor> &tensors)
{
  std::vector<torch::Tensor> leaves;
  for (const auto &t : tensors) leaves.push_back(t.detach().requires_grad_(true));
  return leaves;
}

void PairProbeMace::compute_staged(bool scoring)
{
  if (atom->nlocal == 0) {    // nothing to compute here, but every exchange needs every rank
    exchange_on_empty_rank();
    return;
  }
  build_local_edges();
  StagedPass pass;
  timer.enter(PhaseTimer::INPUTS);
  staged_inputs(pass);
  timer.enter(PhaseTimer::FORWARD);
  staged_forward(pass);
  timer.enter(PhaseTimer::BACKWARD);
  staged_energy(pass);
  staged_backward(pass);
  timer.enter(PhaseTimer::EDGE_GRADS);
  staged_edge_forces(pass);
  if (scoring) {
    std::vector<torch::Tensor> detached;
    for (const auto &t : pass.feats_out) detached.push_back(t.detach());
    impl->node_feats = torch::cat(detached, 1);    // every layer's output: what the head reads
  }
}

/* The forward and reverse exchanges of every layer, with nothing to send. */
void PairProbeMace::exchange_on_empty_rank()
{
  const int64_t nall = atom->nlocal + atom->nghost;
  std::vector<double> rows;
  for (int layer = 1; layer < num_layers; layer++) {
    rows.assign(nall * exchange_widths[layer], 0.0);
    exchange_rows(rows.data(), static_cast<int>(exchange_widths[layer]), true);
  }
  for (int layer = num_layers - 1; layer >= 1; layer--) {
    rows.assign(nall * exchange_widths[layer], 0.0);
    exchange_rows(rows.data(), static_cast<int>(exchange_widths[layer]), false);
  }
}

/* Edges j -> i into local atoms i from every atom j within r_max, local or ghost, with mace's
   edge vector x_i - x_j. */
void PairProbeMace::build_local_edges()
{
  double **x = atom->x;
  const double cutsq_model = r_max * r_max;
  senders.clear();
  receivers.clear();
  edge_vectors.clear();
  for (int ii = 0; ii < list->inum; ii++) {
    const int i = list->ilist[ii];
    for_each_neighbour_within(list, x, cutsq_model, i, [&](int j, double dx, double dy, double dz) {
      senders.push_back(j);
      receivers.push_back(i);
      edge_vectors.insert(edge_vectors.end(), {dx, dy, dz});
    });
  }
}

/* Edge tensors, species, and layer 0's messages (the species embedding, the same on ghosts). */
void PairProbeMace::staged_inputs(StagedPass &pass)
{
  const int nlocal = atom->nlocal;
  const int64_t nall = nlocal + atom->nghost;
  const torch::Device device = impl->device;
  const int64_t nedges = static_cast<int64_t>(senders.size());
  pass.vectors = torch::from_blob(edge_vectors.data(), {nedges, 3},
                                  torch::TensorOptions().dtype(torch::kFloat64))
                     .to(device, /*non_blocking=*/false, /*copy=*/true)
                     .requires_grad_(true);
  torch::Tensor species = torch::empty({nall}, torch::TensorOptions().dtype(torch::kInt64));
  int64_t *spec = species.data_ptr<int64_t>();
  for (int64_t i = 0; i < nall; i++) spec[i] = species_of_atom(static_cast<int>(i));
  pass.species = species.to(device);
  pass.edge_index = edge_tensor(senders, receivers).to(device);
  pass.species_local = pass.species.slice(0, 0, nlocal);

  pass.edges = impl->call("stage_edges", {pass.vectors, pass.species, pass.edge_index})
                   .toTensorVector();
  pass.edge_leaves = leaves_of(pass.edges);
  for (const auto &t : pass.edge_leaves) pass.edge_list.push_back(t);
  {
    torch::NoGradGuard no_grad;    // the embedding depends on species only
    pass.node_feats = impl->call("stage_embedding", {pass.species}).toTensor();
    pass.sent0 = impl->call("stage_up", {static_cast<int64_t>(0), pass.node_feats}).toTensor();
  }
  pass.node_feats = pass.node_feats.slice(0, 0, nlocal);
}

/* Forward, layer by layer, keeping each layer's inputs as leaves of its own graph. Before
   layer k > 0 the local atoms' messages are copied to their ghost images. */
void PairProbeMace::staged_forward(StagedPass &pass)
{
  const int nlocal = atom->nlocal;
  const int64_t nall = nlocal + atom->nghost;
  const int L = num_layers;
  pass.feats_in.assign(L, {});
  pass.sent_local.assign(L, {});
  pass.sent_all.assign(L, {});
  pass.feats_out.assign(L, {});
  pass.energies.assign(L, {});
  torch::Tensor &node_feats = pass.node_feats;
  for (int layer = 0; layer < L; layer++) {
    if (layer == 0) {
      pass.sent_all[layer] = pass.sent0;
    } else {
      pass.feats_in[layer] = node_feats = node_feats.detach().requires_grad_(true);
      pass.sent_local[layer] =
          impl->call("stage_up", {static_cast<int64_t>(layer), node_feats}).toTensor();
      torch::Tensor rows = torch::zeros({nall, exchange_widths[layer]},
                                        torch::TensorOptions().dtype(torch::kFloat64));
      rows.slice(0, 0, nlocal).copy_(pass.sent_local[layer].detach());
      exchange_rows(rows.data_ptr<double>(), static_cast<int>(rows.size(1)), true);
      pass.sent_all[layer] = rows.to(impl->device).requires_grad_(true);
    }
    auto out = impl->call("stage_layer", {static_cast<int64_t>(layer), pass.sent_all[layer],
                                          node_feats, pass.species_local, pass.edge_list,
                                          pass.edge_index, static_cast<int64_t>(nlocal)})
                   .toTuple();
    pass.feats_out[layer] = node_feats = out->elements()[0].toTensor();
    pass.energies[layer] = out->elements()[1].toTensor();
  }
}

/* Local atoms' energies from the per-layer terms, and dE/d(term) to start the backward pass. */
void PairProbeMace::staged_energy(StagedPass &pass)
{
  const std::vector<torch::Tensor> energy_leaves = leaves_of(pass.energies);
  torch::Tensor node_energy =
      impl->call("stage_energy", {pass.species_local, torch::stack(energy_leaves)}).toTensor();
  pass.energy_grads = torch::autograd::grad({node_energy.sum()}, energy_leaves);
  impl->node_energy = node_energy.detach();
}

/* Backward, layer by layer: gradients on ghost rows of what a layer received go back to the
   owners (reverse communication) before the chain continues into the layer below. */
void PairProbeMace::staged_backward(StagedPass &pass)
{
  const int nlocal = atom->nlocal;
  const int64_t nall = nlocal + atom->nghost;
  const size_t E = pass.edge_leaves.size();
  pass.edge_grads.clear();
  for (const auto &t : pass.edge_leaves) pass.edge_grads.push_back(torch::zeros_like(t));
  torch::Tensor feats_grad;
  for (int layer = num_layers - 1; layer >= 0; layer--) {
    std::vector<torch::Tensor> outputs{pass.energies[layer]};
    std::vector<torch::Tensor> grad_outputs{pass.energy_grads[layer]};
    if (feats_grad.defined()) {
      outputs.push_back(pass.feats_out[layer]);
      grad_outputs.push_back(feats_grad);
    }
    std::vector<torch::Tensor> inputs(pass.edge_leaves);
    if (layer > 0) {
      inputs.push_back(pass.sent_all[layer]);
      inputs.push_back(pass.feats_in[layer]);
    }
    const auto grads = torch::autograd::grad(outputs, inputs, grad_outputs, false, false, true);
    for (size_t k = 0; k < E; k++)
      if (grads[k].defined()) pass.edge_grads[k] += grads[k];
    if (layer == 0) break;
    torch::Tensor rows = grads[E].defined()
        ? grads[E].to(torch::kCPU, torch::kFloat64).contiguous()
        : torch::zeros({nall, exchange_widths[layer]}, torch::TensorOptions().dtype(torch::kFloat64));
    exchange_rows(rows.data_ptr<double>(), static_cast<int>(rows.size(1)), false);
    const torch::Tensor sent_grad = rows.slice(0, 0, nlocal).to(impl->device);
    torch::Tensor through_up = torch::autograd::grad({pass.sent_local[layer]},
                                                     {pass.feats_in[layer]}, {sent_grad})[0];
    feats_grad = grads[E + 1].defined() ? through_up + grads[E + 1] : through_up;
  }
}

/* dE/d(edge vectors) through stage_edges, then to the atoms of each edge. */
void PairProbeMace::staged_edge_forces(StagedPass &pass)
{
  std::vector<torch::Tensor> edge_outputs, edge_grad_outputs;
  for (size_t k = 0; k < pass.edges.size(); k++)
    if (pass.edges[k].requires_grad()) {
      edge_outputs.push_back(pass.edges[k]);
      edge_grad_outputs.push_back(pass.edge_grads[k]);
    }
  const torch::Tensor edge_grad = torch::autograd::grad(edge_outputs, {pass.vectors},
                                                        edge_grad_outputs, false, false, true)[0];
  if (!edge_grad.defined()) return;
  timer.enter(PhaseTimer::SCATTER);
  const torch::Tensor g_cpu = edge_grad.to(torch::kCPU).contiguous();
  add_edge_forces(g_cpu.data_ptr<double>());
}

/* edge_grad: [nedges, 3] dE/d(x_i - x_j) = g: the receiver i feels -g, the sender j (maybe a
   ghost) +g. */
void PairProbeMace::add_edge_forces(const double *g)
{
  double **f = atom->f;
  double *own = mlip_forces.empty() ? nullptr : mlip_forces.data();
  const int64_t nedges = static_cast<int64_t>(senders.size());
  for (int64_t e = 0; e < nedges; e++) {
    const int i = static_cast<int>(receivers[e]), j = static_cast<int>(senders[e]);
    for (int d = 0; d < 3; d++) {
      f[i][d] -= g[3 * e + d];
      f[j][d] += g[3 * e + d];
      if (own) {
        own[3 * i + d] -= g[3 * e + d];
        own[3 * j + d] += g[3 * e + d];
      }
    }
  }
}

/* The head's per-atom scores and values of the local atoms, from their node features and
   their complete MLIP forces: ghost rows of mlip_forces go back to their owners first (reverse
   communication, on every rank, atoms or not). */
void PairProbeMace::head_terms_of_local_atoms(int nlocal)
{
  exchange_rows(mlip_forces.data(), 3, false);
  if (nlocal == 0) return;
  torch::Tensor forces = torch::from_blob(mlip_forces.data(), {nlocal, 3},
                                          torch::TensorOptions().dtype(torch::kFloat64))
                             .to(impl->device);
  auto out = impl->call("head_terms", {impl->node_feats, forces}).toTuple();
  impl->scores = out->elements()[0].toTensor();
  impl->values = out->elements()[1].toTensor();
}

void PairProbeMace::exchange_rows(double *rows, int width, bool forward)
{
  const PhaseTimer::Phase caller = timer.enter(PhaseTimer::EXCHANGE);
  comm_rows = rows;
  comm_width = width;
  if (forward)
    comm->forward_comm(this, comm_width);
  else
    comm->reverse_comm(this, comm_width);
  comm_rows = nullptr;
  timer.enter(caller);
}

/* `timing yes`: each phase's wall time per step since the last report, slowest rank.
   neighbors: the edge list from LAMMPS's neighbour list (host); inputs: edge and species
   tensors to the device, edge features, embedding; forward/backward: the layers (whole graph:
   both in forward); exchange: LAMMPS communication of halo rows; edge_grads: gradients through
   the edge features; scatter: gradients and energies back to the host and into atom->f;
   head: the head's terms, pooling and readout (scored steps only). */
void PairProbeMace::finish()
{
  if (!timer.enabled || timer.steps == 0) return;
  std::array<double, PhaseTimer::NPHASES> slowest{};
  MPI_Allreduce(timer.seconds.data(), slowest.data(), PhaseTimer::NPHASES, MPI_DOUBLE, MPI_MAX,
                world);
  if (comm->me == 0) {
    std::string line = fmt::format("probe/mace timing: {} steps ({} scored), s/step on the slowest "
                                   "rank:", timer.steps, timer.scored_steps);
    double total = 0.0;
    for (int p = 0; p < PhaseTimer::NPHASES; p++) {
      line += fmt::format(" {} {:.4g}", PhaseTimer::name(p), slowest[p] / timer.steps);
      total += slowest[p];
    }
    utils::logmesg(lmp, "{}; total {:.4g}\n", line, total / timer.steps);
  }
  timer.reset();
}

int PairProbeMace::pack_forward_comm(int n, int *list, double *buf, int, int *)
{
  const size_t W = comm_width;
  for (int k = 0; k < n; k++)
    std::memcpy(buf + k * W, comm_rows + static_cast<size_t>(list[k]) * W, W * sizeof(double));
  return n * comm_width;
}

void PairProbeMace::unpack_forward_comm(int n, int first, double *buf)
{
  std::memcpy(comm_rows + static_cast<size_t>(first) * comm_width, buf,
              static_cast<size_t>(n) * comm_width * sizeof(double));
}

int PairProbeMace::pack_reverse_comm(int n, int first, double *buf)
{
  std::memcpy(buf, comm_rows + static_cast<size_t>(first) * comm_width,
              static_cast<size_t>(n) * comm_width * sizeof(double));
  return n * comm_width;
}

void PairProbeMace::unpack_reverse_comm(int n, int *list, double *buf)
{
  const size_t W = comm_width;
  for (int k = 0; k < n; k++) {
    double *row = comm_rows + static_cast<size_t>(list[k]) * W;
    for (size_t c = 0; c < W; c++) row[c] += buf[k * W + c];
  }
}

void PairProbeMace::pool_and_score(int nlocal)
{
  const int H = num_heads, D = value_dim;
  const double *s = nlocal > 0 ? impl->scores.data_ptr<double>() : nullptr;
  const double *v = nlocal > 0 ? impl->values.data_ptr<double>() : nullptr;

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
    // The logit and the predicted error's width depend on the whole system's atom count.
    torch::Tensor atom_count = torch::full({1}, static_cast<double>(atom->natoms),
                                           torch::TensorOptions().dtype(torch::kFloat64))
                                   .to(impl->device);
    torch::Tensor out = impl->call("readout", {pooled.to(impl->device), atom_count}).toTensor();
    logit = out.to(torch::kCPU).item<double>();
    torch::Tensor bounds =
        impl->call("readout_error", {pooled.to(impl->device), atom_count}).toTensor();
    bounds = bounds.to(torch::kCPU).contiguous();
    for (int k = 0; k < 3; k++) predicted_error[k] = bounds.data_ptr<double>()[k];
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

/* What stays allocated between steps: the graph buffers (reused, so their capacity is kept),
   the type maps and the last scored importance. The tensors (exchanged rows included) and the
   autograd graphs exist only inside compute(); torch frees them when it returns. */
double PairProbeMace::memory_usage()
{
  double bytes = Pair::memory_usage();
  bytes += static_cast<double>(hop.capacity() + node_of_atom.capacity() + atom_of_node.capacity()) *
      sizeof(int);
  bytes += static_cast<double>(senders.capacity() + receivers.capacity()) * sizeof(int64_t);
  bytes += static_cast<double>(edge_vectors.capacity() + importance.capacity() + mlip_forces.capacity() +
                               type_atomic_number.capacity()) * sizeof(double);
  bytes += static_cast<double>(type_to_species.capacity() + atomic_numbers.capacity() +
                               exchange_widths.capacity()) * sizeof(int64_t);
  return bytes;
}
