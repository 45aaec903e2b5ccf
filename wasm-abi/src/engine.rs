//! The engine a worker hosts its skill with: wasmtime configured for pooling,
//! epoch deadlines and limits, a linker with the granted imports, and the
//! compile cache.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use crate::bindings::{Skill, SkillPre};
use crate::cache::{CacheOutcome, CompileCache};
use crate::component::SkillComponent;
use crate::config::EngineConfig;
use crate::epoch_ticker::EpochTicker;
use crate::errors::{EngineError, InstantiateError, LoadError};
use crate::host::{HostClock, HostLog};
use crate::instance::SkillInstance;
use crate::limiter::Limiter;
use crate::store_data::StoreData;
use crate::validate;

/// Core instances one skill component may need: a Rust guest has its main
/// module plus the shim and fixup modules of the component linker; other
/// toolchains (componentize-py) have more.
const CORE_INSTANCES_PER_COMPONENT: u32 = 32;
/// Tables per component (the main module's plus the shims' indirect tables).
const TABLES_PER_COMPONENT: u32 = 8;
/// Linear memories per component (one for a Rust guest; some toolchains use
/// more).
const MEMORIES_PER_COMPONENT: u32 = 2;
/// Decommits the pool batches into one `madvise` pass: most of the cost of
/// recycling an instance slot on this kind of machine is kernel work, and
/// batching it gave about 1.5x (FACTS.md).
const DECOMMIT_BATCH_SIZE: usize = 16;

/// Hosts skills: one per worker process, synchronous calls. Dropping it stops
/// its epoch ticker thread.
pub struct SkillEngine {
    engine: Engine,
    linker: Linker<StoreData>,
    cfg: EngineConfig,
    cache: Option<CompileCache>,
    /// Declared last so it stops after the rest is dropped.
    _ticker: EpochTicker,
}

impl std::fmt::Debug for SkillEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkillEngine")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl SkillEngine {
    /// Builds the engine and starts its epoch ticker thread.
    pub fn new(cfg: EngineConfig) -> Result<Self, EngineError> {
        check_config(&cfg)?;
        let engine = Engine::new(&wasmtime_config(&cfg)?)
            .map_err(|e| EngineError::Wasmtime(format!("{e:#}")))?;
        let mut linker = Linker::<StoreData>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| EngineError::Link(format!("WASI: {e:#}")))?;
        Skill::add_to_linker::<StoreData, HasSelf<StoreData>>(&mut linker, |data| data)
            .map_err(|e| EngineError::Link(format!("host interface: {e:#}")))?;
        let cache = cfg
            .cache_dir
            .clone()
            .map(|dir| CompileCache::new(dir, &engine, &cfg));
        let ticker =
            EpochTicker::start(engine.weak(), cfg.epoch_tick).map_err(EngineError::Ticker)?;
        Ok(Self {
            engine,
            linker,
            cfg,
            cache,
            _ticker: ticker,
        })
    }

    /// The configuration this engine was built with.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Compiles and validates `wasm`: it must be a component, import only what
    /// the host grants, and export the world's functions with the world's
    /// types. Errors name the problem.
    pub fn load(&self, wasm: &[u8]) -> Result<SkillComponent, LoadError> {
        validate::check_header(wasm)?;
        let component =
            Component::new(&self.engine, wasm).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        self.link(component)
    }

    /// Like [`SkillEngine::load`], through the compile cache: a component
    /// compiled before (same `sha256`, same engine) is loaded from disk in
    /// milliseconds. `sha256` must be the digest of `wasm` (checked). Without
    /// a cache dir every load is a [`CacheOutcome::Miss`].
    pub fn load_cached(
        &self,
        wasm: &[u8],
        sha256: &[u8; 32],
    ) -> Result<(SkillComponent, CacheOutcome), LoadError> {
        validate::check_header(wasm)?;
        let actual: [u8; 32] = Sha256::digest(wasm).into();
        if &actual != sha256 {
            return Err(LoadError::DigestMismatch {
                expected: hex::encode(sha256),
                actual: hex::encode(actual),
            });
        }
        let Some(cache) = &self.cache else {
            return Ok((self.load(wasm)?, CacheOutcome::Miss));
        };
        if let Some(component) = cache.get(&self.engine, sha256) {
            return Ok((self.link(component)?, CacheOutcome::Hit));
        }
        let artifact = self
            .engine
            .precompile_component(wasm)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        // SAFETY: `artifact` was produced just now by `precompile_component`
        // of this same engine, which is exactly what `deserialize` requires.
        let component = unsafe { Component::deserialize(&self.engine, &artifact) }
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let linked = self.link(component)?;
        // Stored only once it proved to be a skill, so the cache holds no
        // refused components.
        cache.put(sha256, &artifact);
        Ok((linked, CacheOutcome::Miss))
    }

    /// Validates a compiled component's imports and exports and pre-links it.
    fn link(&self, component: Component) -> Result<SkillComponent, LoadError> {
        validate::check_exports(&self.engine, &component)?;
        validate::check_imports(&self.engine, &component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let pre = SkillPre::new(pre).map_err(|e| validate::wrong_export_type(&e))?;
        Ok(SkillComponent { pre })
    }

    /// Creates an instance of `component` in its own store, with its own
    /// limits, granted `clock` and `logger`.
    pub fn instantiate(
        &self,
        component: &SkillComponent,
        clock: Arc<dyn HostClock>,
        logger: Arc<dyn HostLog>,
    ) -> Result<SkillInstance, InstantiateError> {
        let limiter = Limiter {
            max_memory_bytes: self.cfg.max_memory_bytes,
            max_table_elements: self.cfg.max_table_elements,
        };
        let data = StoreData::new(limiter, clock, logger, self.cfg.max_log_bytes_per_call);
        let mut store = Store::new(&self.engine, data);
        store.limiter(|data| &mut data.limiter);
        store.epoch_deadline_trap();
        // Instantiation runs guest code too (start functions): same deadline.
        store.set_epoch_deadline(self.cfg.deadline_ticks());
        let skill = component.pre.instantiate(&mut store).map_err(|e| {
            if e.chain()
                .any(|c| c.is::<wasmtime::PoolConcurrencyLimitError>())
            {
                InstantiateError::PoolExhausted {
                    max_instances: self.cfg.max_instances,
                }
            } else {
                InstantiateError::Failed(format!("{e:#}"))
            }
        })?;
        Ok(SkillInstance::new(store, skill, &self.cfg))
    }
}

/// Refuses configurations wasmtime would accept but that cannot work.
fn check_config(cfg: &EngineConfig) -> Result<(), EngineError> {
    let refuse = |field, why| Err(EngineError::Config { field, why });
    if cfg.max_instances == 0 {
        return refuse("max_instances", "must be at least 1");
    }
    if cfg.epoch_tick.is_zero() {
        return refuse("epoch_tick", "must be longer than zero");
    }
    if cfg.call_deadline.is_zero() {
        return refuse("call_deadline", "must be longer than zero");
    }
    if cfg.max_memory_bytes == 0 || usize::try_from(cfg.max_memory_bytes).is_err() {
        return refuse("max_memory_bytes", "must be above zero and fit in usize");
    }
    if cfg.max_table_elements == 0 {
        return refuse("max_table_elements", "must be at least 1");
    }
    Ok(())
}

/// wasmtime settings: component model, epoch interruption, pooling allocator
/// sized for `max_instances` skill instances.
fn wasmtime_config(cfg: &EngineConfig) -> Result<Config, EngineError> {
    let max_memory = usize::try_from(cfg.max_memory_bytes).map_err(|_| EngineError::Config {
        field: "max_memory_bytes",
        why: "must fit in usize",
    })?;
    let instances = cfg.max_instances;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .total_memories(instances.saturating_mul(MEMORIES_PER_COMPONENT))
        .total_tables(instances.saturating_mul(TABLES_PER_COMPONENT))
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .max_memory_size(max_memory)
        .table_elements(usize::try_from(cfg.max_table_elements).unwrap_or(usize::MAX))
        .decommit_batch_size(DECOMMIT_BATCH_SIZE);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Ok(config)
}
