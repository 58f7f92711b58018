/* compute ID all probe/reliability [every N|v_name]

   Global scalar: calibrated probability that the MLIP is reliable for the current structure.
   Global vector (2): [probability, logit]. Per-atom vector: importance (1 = average atom).
   The score itself is computed by pair_style probe/mace from the same forward pass as the
   forces, on every N-th step only; between those steps the run costs plain MACE. With
   `every v_name` N is the current value of an equal-style or internal variable, read on every
   step (probe-md's driver lowers it while the reliability is low). */

#include "compute_probe_reliability.h"

#include "atom.h"
#include "error.h"
#include "force.h"
#include "input.h"
#include "memory.h"
#include "pair_probe_mace.h"
#include "update.h"
#include "variable.h"

#include <cstring>

using namespace LAMMPS_NS;

ComputeProbeReliability::ComputeProbeReliability(LAMMPS *lmp, int narg, char **arg) :
    Compute(lmp, narg, arg), pair(nullptr), every(1), every_ivar(-1), nmax(0),
    importance(nullptr)
{
  int iarg = 3;
  while (iarg < narg) {
    if (strcmp(arg[iarg], "every") == 0) {
      if (iarg + 1 >= narg) error->all(FLERR, "compute probe/reliability: every needs a value");
      if (strncmp(arg[iarg + 1], "v_", 2) == 0) {
        every_variable = arg[iarg + 1] + 2;
      } else {
        every = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
        if (every < 1) error->all(FLERR, "compute probe/reliability: every must be >= 1");
      }
      iarg += 2;
    } else {
      error->all(FLERR, "Unknown compute probe/reliability keyword {}: only `every N|v_name` is known",
                 arg[iarg]);
    }
  }
  if (igroup != 0)
    error->all(FLERR, "compute probe/reliability scores the whole system: use group all, not {}",
               arg[1]);
  scalar_flag = 1;
  vector_flag = 1;
  size_vector = 5;  // p, logit, predicted error: median, lower, upper (80 % interval)
  extscalar = 0;
  extvector = 0;
  peratom_flag = 1;
  size_peratom_cols = 0;
  vector = new double[5];
}

ComputeProbeReliability::~ComputeProbeReliability()
{
  delete[] vector;
  memory->destroy(importance);
}

void ComputeProbeReliability::init()
{
  pair = dynamic_cast<PairProbeMace *>(force->pair_match("probe/mace", 1, 0));
  if (!pair)
    error->all(FLERR, "compute probe/reliability requires pair_style probe/mace (the score comes "
               "from the same forward pass as the forces)");
  if (!every_variable.empty()) {
    every_ivar = input->variable->find(every_variable.c_str());
    if (every_ivar < 0)
      error->all(FLERR, "compute probe/reliability every v_{}: no variable {}", every_variable,
                 every_variable);
    if (!input->variable->equalstyle(every_ivar))
      error->all(FLERR, "compute probe/reliability every v_{}: variable {} is not equal-style "
                 "or internal", every_variable, every_variable);
  }
}

int ComputeProbeReliability::current_every()
{
  if (every_ivar < 0) return every;
  const double value = input->variable->compute_equal(every_ivar);
  if (!(value >= 1.0) || value != static_cast<double>(static_cast<int>(value)))
    error->all(FLERR, "compute probe/reliability every v_{}: the variable is {}, not a positive "
               "integer", every_variable, value);
  return static_cast<int>(value);
}

void ComputeProbeReliability::check_scored(const char *what)
{
  if (!pair || pair->scored_step != update->ntimestep)
    error->all(FLERR, "compute probe/reliability {} was requested on step {}, which was not "
               "scored (compute {} has every {}): make thermo, dump and fix intervals that use "
               "it multiples of {}", what, update->ntimestep, id, current_every(), current_every());
}

double ComputeProbeReliability::compute_scalar()
{
  invoked_scalar = update->ntimestep;
  check_scored("scalar");
  scalar = pair->probability;
  return scalar;
}

void ComputeProbeReliability::compute_vector()
{
  invoked_vector = update->ntimestep;
  check_scored("vector");
  vector[0] = pair->probability;
  vector[1] = pair->logit;
  vector[2] = pair->predicted_error[1];
  vector[3] = pair->predicted_error[0];
  vector[4] = pair->predicted_error[2];
}

void ComputeProbeReliability::compute_peratom()
{
  invoked_peratom = update->ntimestep;
  check_scored("per-atom importance");
  if (atom->nmax > nmax) {
    memory->destroy(importance);
    nmax = atom->nmax;
    memory->create(importance, nmax, "probe/reliability:importance");
    vector_atom = importance;
  }
  const int nlocal = atom->nlocal;
  if (static_cast<int>(pair->importance.size()) != nlocal)
    error->one(FLERR, "compute probe/reliability: atoms changed since step {} was scored",
               pair->scored_step);
  for (int i = 0; i < nlocal; i++) importance[i] = pair->importance[i];
}

double ComputeProbeReliability::memory_usage()
{
  return static_cast<double>(nmax) * sizeof(double);
}
